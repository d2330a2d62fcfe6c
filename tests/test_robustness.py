"""Hostile-but-fair input: bounded options, multi-file runs, output folders, interrupts, stdin,
folders.

Each test runs the real `max-whisper` command on real audio and checks what a user sees: one line
on stderr, the exit status, and the files left behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from max_whisper.errors import UsageError
from max_whisper.options import MAX_BEAM_SIZE, MAX_BEST_OF, TranscribeOptions
from support import SAMPLE, interruptible, one_error_line, run_cli

CLI = [sys.executable, "-m", "max_whisper.cli"]


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--beam-size", "100000"], f"at most {MAX_BEAM_SIZE}"),
        (["--best-of", "100000"], f"at most {MAX_BEST_OF}"),
        (["--temperature", "nan"], "between 0 and 1"),
        (["--temperature", "inf"], "between 0 and 1"),
        (["--temperature", "5"], "between 0 and 1"),
        (["--temperature-increment-on-fallback", "0"], "positive"),
    ],
)
def test_unbounded_options_are_refused_before_any_work(flags, words):
    # a model that does not exist: the option check must come first, so its message is what we see
    proc = run_cli("transcribe", SAMPLE, "--model", "/no/such/model", *flags, timeout=60)
    assert proc.returncode == 2
    assert words in one_error_line(proc)
    assert proc.stdout == ""


def test_the_api_and_the_server_share_the_bounds():
    with pytest.raises(UsageError, match="at most"):
        TranscribeOptions(beam_size=MAX_BEAM_SIZE + 1)
    with pytest.raises(UsageError, match="between 0 and 1"):
        TranscribeOptions(temperature=(0.0, float("nan")))
    assert TranscribeOptions(temperature=0.3).temperatures == (0.3,)
    assert TranscribeOptions.cli_defaults().best_of == 5 and TranscribeOptions().best_of is None


def test_a_bad_file_in_the_middle_does_not_stop_the_run(tmp_path):
    text_as_wav = tmp_path / "notes.wav"
    text_as_wav.write_text("these are not samples\n")
    proc = run_cli(
        "transcribe",
        SAMPLE,
        text_as_wav,
        SAMPLE,
        "-f",
        "txt",
        "-o",
        tmp_path / "out",
        "--verbose",
        "False",
    )
    assert proc.returncode == 1
    transcripts = [line for line in proc.stdout.splitlines() if line.startswith(str(SAMPLE))]
    assert len(transcripts) == 2 and all("quick brown fox" in line for line in transcripts)
    errors = proc.stderr.splitlines()
    assert any("notes.wav" in line for line in errors)
    assert errors[-1] == "max-whisper: 1 of 3 inputs failed"
    assert (tmp_path / "out" / "sample.txt").is_file()


def test_an_unwritable_output_folder_fails_before_the_model_loads(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    proc = run_cli(
        "transcribe", SAMPLE, "--model", "/no/such/model", "-o", blocker / "out", "-f", "srt"
    )
    assert proc.returncode == 2
    assert "cannot write to the output folder" in one_error_line(proc)


def test_a_folder_is_transcribed_and_an_empty_one_is_named(tmp_path):
    (tmp_path / "talks" / "day1").mkdir(parents=True)
    (tmp_path / "talks" / "day1" / "sample.wav").write_bytes(SAMPLE.read_bytes())
    (tmp_path / "talks" / "readme.txt").write_text("not audio")
    proc = run_cli("transcribe", tmp_path / "talks")
    assert proc.returncode == 0, proc.stderr
    assert "quick brown fox" in proc.stdout
    (tmp_path / "empty").mkdir()
    proc = run_cli("transcribe", tmp_path / "empty", timeout=60)
    assert proc.returncode == 2
    assert "is a directory with no audio files" in one_error_line(proc)


def test_audio_from_standard_input(tmp_path):
    with open(SAMPLE, "rb") as stdin:
        proc = run_cli("transcribe", "-", "-f", "txt", "-o", tmp_path, stdin=stdin, text=False)
    assert proc.returncode == 0, proc.stderr
    assert b"quick brown fox" in proc.stdout
    assert "quick brown fox" in (tmp_path / "stdin.txt").read_text()


def long_recording(path: Path, repeats: int = 120) -> Path:
    """The sample, again and again (~25 min): long enough that an interrupt after the first window
    lands mid-file however fast the machine decodes."""
    from max_whisper.audio import load_audio

    samples = np.concatenate([load_audio(SAMPLE), np.zeros(16000, dtype=np.float32)] * repeats)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return path


def test_ctrl_c_keeps_the_finished_segments(tmp_path):
    audio = long_recording(tmp_path / "talk.wav")
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [*CLI, "transcribe", str(audio), "-f", "srt", "-o", str(out), "--verbose"],
        preexec_fn=interruptible,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    printed = [proc.stdout.readline() for _ in range(3)]  # three segments decoded: interrupt now
    proc.send_signal(signal.SIGINT)
    try:
        stdout, stderr = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:  # a first Ctrl-C can go unseen (rarely): a user presses again
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert sorted(os.listdir(out)) == ["talk.srt.partial"], (
        "no complete output and no temporary file"
    )
    partial = (out / "talk.srt.partial").read_text()
    for line in printed:
        assert line.split("]", 1)[1].strip() in partial
    assert "talk.srt.partial" in stderr and "Traceback" not in stderr
