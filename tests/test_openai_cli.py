"""At home for openai-whisper users: our CLI's defaults are its CLI's, and its flags are
accepted."""

from __future__ import annotations

import json

import pytest

from max_whisper.audio import load_audio
from support import SAMPLE, requires_reference, run_cli, shared_clip


@requires_reference
@pytest.mark.parametrize("name", ["librivox-0870", "ami_ES2011a_40_46"])
def test_default_segments_equal_openai_whisper_cli_defaults(models, tmp_path, name):
    """openai-whisper's CLI decodes with beam 5, best-of 5 and the temperature fallback: so do we
    (its CLI needs ffmpeg, so its transcribe() runs here with exactly its CLI's defaults)."""
    import whisper

    clip = shared_clip(name)
    proc = run_cli("transcribe", str(clip), "-f", "json", "-o", str(tmp_path), "--verbose", "False")
    assert proc.returncode == 0, proc.stderr
    ours = json.loads((tmp_path / f"{clip.stem}.json").read_text())
    theirs = whisper.transcribe(
        models.torch("tiny.en"),
        load_audio(clip),
        fp16=False,
        beam_size=5,
        best_of=5,
        verbose=None,
        temperature=(0.0, 0.2, 0.4, 0.6, 0.8, 1.0),
        condition_on_previous_text=True,
    )
    assert [s["tokens"] for s in ours["segments"]] == [s["tokens"] for s in theirs["segments"]]
    assert [(s["start"], s["end"]) for s in ours["segments"]] == [
        (s["start"], s["end"]) for s in theirs["segments"]
    ]


def test_openai_whisper_flags_are_accepted(tmp_path):
    proc = run_cli(
        "transcribe",
        str(SAMPLE),
        "--fp16",
        "False",
        "--threads",
        "1",
        "--model_dir",
        str(tmp_path),
        "--carry_initial_prompt",
        "True",
        "--initial_prompt",
        "A short test.",
        "--prepend_punctuations",
        "\"'([{-",
        "--append_punctuations",
        "\"'.,!?:)]}",
        "--max_words_per_line",
        "4",
        "--word_timestamps",
        "True",
        "--device",
        "cpu",
        "--verbose",
        "False",
        "--output_format",
        "srt",
        "--output_dir",
        str(tmp_path),
        "--beam_size",
        "2",
        "--best_of",
        "2",
        "--temperature",
        "0",
    )
    assert proc.returncode == 0, proc.stderr
    srt = (tmp_path / "sample.srt").read_text()
    assert "fox" in srt and all(
        len(line.split()) <= 4 for line in srt.splitlines() if "-->" not in line
    )


def test_device_cuda_is_gpu_and_bad_values_fail_in_one_line():
    proc = run_cli("transcribe", str(SAMPLE), "--device", "cuda", timeout=120)
    if proc.returncode == 0:  # a GPU here: cuda means it
        return
    assert "gpu" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    proc = run_cli("transcribe", str(SAMPLE), "--device", "tpu", timeout=60)
    assert proc.returncode == 2 and "unknown device" in proc.stderr


def test_english_only_model_warns_on_another_language():
    proc = run_cli("transcribe", str(SAMPLE), "--language", "de", "--verbose", "False", timeout=300)
    assert proc.returncode == 0
    assert "English-only model but received 'de'; using English instead" in proc.stderr
    assert "quick brown fox" in proc.stdout
