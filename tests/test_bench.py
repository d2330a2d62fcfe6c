"""`max-whisper bench`: the JSON it produces, on one short referenced clip; no timing thresholds."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import SHARED_AUDIO, get_model, has_module, requires_reference, requires_shared_audio
from max_whisper import bench

CLIP = SHARED_AUDIO / "librivox-0880.wav"
ENVIRONMENT_KEYS = {"cpu_model", "cores", "cpu_features", "python", "platform", "max", "max_accelerators", "torch",
                    "openai_whisper", "faster_whisper", "ctranslate2", "device", "load_average"}


def max_backend_available() -> bool:
    try:
        from max_whisper.backends.max import MaxBackend  # noqa: F401
    except Exception:
        return False
    return True


def check_result(r: dict, backend: str) -> None:
    assert r["backend"] == backend and r["model"] == "tiny.en" and r["device"] == "cpu"
    assert r["audio_s"] == pytest.approx(3.0, abs=0.05)
    assert r["wall_s_median"] > 0 and 0 < r["wall_s_min"] <= r["wall_s_median"]
    assert len(r["wall_s_runs"]) == 1
    assert r["rtfx"] == pytest.approx(r["audio_s"] / r["wall_s_median"], rel=2e-3)
    assert r["encoder_ms_per_window"] > 0 and r["windows"] >= 1
    assert r["decoder_ms_per_token"] > 0 and r["tokens"] > 0
    assert isinstance(r["wer"], float) and 0.0 <= r["wer"] <= 1.0 and r["wer_clips"] == 1
    assert r["peak_rss_mb"] > 0 and r["load_s"] >= 0
    assert r["deterministic"] is True
    [clip] = r["clips"]
    assert clip["file"] == CLIP.name and clip["reference"] == "he was not an ill disposed young man"
    assert "young man" in clip["text"].lower() and 0.0 <= clip["wer"] <= 1.0


@pytest.fixture(scope="module")
def doc():
    if not CLIP.is_file():
        pytest.skip(f"{CLIP} is absent")
    backends = ["reference"]
    if max_backend_available():
        backends.append("max")
    if has_module("faster_whisper"):
        backends.append("faster-whisper-int8")
    return bench.run_bench(backends=backends, models=["tiny.en"], audio=[str(CLIP)], repeats=1, device="cpu",
                           isolate=False, loader=lambda name, backend, device: get_model(name, backend),
                           log=lambda message: None, workloads=["short"])


@requires_shared_audio
@requires_reference
def test_bench_document(doc):
    json.loads(json.dumps(doc))  # plain JSON all the way down
    assert doc["schema"] == bench.SCHEMA
    assert ENVIRONMENT_KEYS <= set(doc["environment"])
    env = doc["environment"]
    assert env["cores"] >= 1 and env["cpu_model"] and env["device"] == "cpu"
    settings = doc["settings"]
    assert settings["language"] == "en" and settings["beam_size"] == 1 and settings["temperature"] == 0.0
    assert settings["condition_on_previous_text"] is False and settings["repeats"] == 1
    assert doc["audio"]["referenced"] == 1 and doc["audio"]["files"][0]["file"] == CLIP.name
    assert doc["errors"] == []
    names = [r["backend"] for r in doc["results"]]
    assert names[0] == "reference"
    for r in doc["results"]:
        check_result(r, r["backend"])
    assert "max" in names or not max_backend_available()
    assert "faster-whisper-int8" in names or not has_module("faster_whisper")


@requires_shared_audio
@requires_reference
def test_markdown_and_chart(doc, tmp_path):
    table = bench.markdown_table(doc)
    for r in doc["results"]:
        assert f"| {r['backend']} | tiny.en |" in table
    assert table.count("\n|") >= len(doc["results"]) + 1
    png = tmp_path / "chart.png"
    bench.write_chart(doc, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@requires_shared_audio
@requires_reference
def test_cli_renders_an_earlier_run(doc, tmp_path, capsys):
    from max_whisper.cli import main

    saved = tmp_path / "latest.json"
    saved.write_text(json.dumps(doc))
    assert main(["bench", "--from-json", str(saved), "--markdown", "--chart", str(tmp_path / "c.png")]) == 0
    assert "| reference | tiny.en |" in capsys.readouterr().out
    assert (tmp_path / "c.png").is_file()


@requires_shared_audio
@pytest.mark.skipif(not has_module("faster_whisper"), reason="faster-whisper is not installed")
def test_isolated_row_in_a_subprocess():
    """The default mode: a fresh process per row, reporting its own peak RSS and warm-start time."""
    if not CLIP.is_file():
        pytest.skip(f"{CLIP} is absent")
    doc = bench.run_bench(backends=["faster-whisper-int8", "faster-whisper-int8-batched"], models=["tiny.en"],
                          audio=[str(CLIP)], repeats=1, device="cpu", log=lambda message: None,
                          workloads=["short"])
    assert doc["errors"] == [] and doc["settings"]["isolation"].startswith("subprocess")
    sequential, batched = doc["results"]
    for r in (sequential, batched):
        assert r["warm_start_s"] > 0 and r["peak_rss_mb"] > 0 and r["rss_scope"].startswith("subprocess")
        assert r["rtfx"] > 0 and 0.0 <= r["wer"] <= 1.0 and r["workload"] == "short"
    assert sequential["tokens"] > 0 and sequential["decoder_ms_per_token"] > 0
    assert batched["backend"] == "faster-whisper-int8-batched" and batched["decoder_ms_per_token"] is None
    assert "young man" in batched["clips"][0]["text"].lower()


# -- pieces, without models ------------------------------------------------------------------------
def test_gpu_rows_appear_only_with_a_gpu():
    none = bench.GpuInfo()
    rows, _ = bench.plan_rows(["reference", "faster-whisper"], "auto", none)
    assert {r.device for r in rows} <= {"cpu"}
    gpu = bench.GpuInfo(max_accelerators=1, torch_cuda=True, ct2_cuda=1)
    rows, _ = bench.plan_rows(["reference", "faster-whisper"], "auto", gpu)
    names = {r.name for r in rows}
    if has_module("torch") and has_module("whisper"):
        assert {"reference", "reference-cuda"} <= names
    if has_module("faster_whisper"):
        assert {"faster-whisper-int8", "faster-whisper-fp32", "faster-whisper-int8-cuda"} <= names
    rows, skipped = bench.plan_rows(["reference"], "gpu", none)
    assert rows == [] and skipped[0]["backend"] == "reference-cuda"
    with pytest.raises(bench.BenchError):
        bench.plan_rows(["pytorch"], "auto", none)


@requires_shared_audio
def test_long_form_file_is_the_clips_with_pauses(tmp_path):
    from max_whisper.audio import load_audio

    clips = [SHARED_AUDIO / "librivox-0880.wav", SHARED_AUDIO / "librivox-0930.wav"]
    path = bench.long_form_file(clips, tmp_path, seconds=20)
    audio = load_audio(path)
    first = load_audio(clips[0])
    assert len(audio) / 16000 >= 20
    np.testing.assert_allclose(audio[:len(first)], first, atol=1e-4)  # 16-bit PCM
    pause = audio[len(first): len(first) + int(bench.LONG_FORM_PAUSES_S[0] * 16000)]
    assert len(pause) and np.abs(pause).max() == 0


def test_batched_faster_whisper_row():
    none = bench.GpuInfo()
    rows, _ = bench.plan_rows(["faster-whisper"], "cpu", none)
    assert [(r.name, r.backend, r.batched) for r in rows] == [
        ("faster-whisper-int8", "int8", False), ("faster-whisper-fp32", "fp32", False),
        ("faster-whisper-int8-batched", "int8", True)]
    rows, _ = bench.plan_rows(["faster-whisper-int8-batched"], "cpu", none)
    assert [r.name for r in rows] == ["faster-whisper-int8-batched"]


def test_timed_backend_counts_phases():
    class Session:
        def logits(self, tokens, positions=None):
            return np.zeros((tokens.shape[0], 1, 4), np.float32)

        def rearrange(self, source_indices):
            pass

    class Backend:
        name, device = "fake", "cpu"

        def encode(self, mel):
            return mel[:, :1]

        def decoder_session(self, features):
            return Session()

    timed = bench.TimedBackend(Backend())
    timed.encode(np.zeros((2, 80, 3000), np.float32))
    session = timed.decoder_session(np.zeros((2, 1500, 384), np.float32))
    for _ in range(3):
        session.logits(np.zeros((2, 4), np.int64))
    session.rearrange([0, 1])
    t = timed.times
    assert t.windows == 2 and t.tokens == 3 and t.encoder_s >= 0 and t.decoder_s >= 0
    assert timed.name == "fake" and timed.device == "cpu"  # everything else is forwarded


def test_word_error_rate_and_references(tmp_path):
    assert bench.word_error_rate(["a b c d"], ["a b x d"]) == pytest.approx(0.25)
    assert bench.word_error_rate(["a b", "c d"], ["a b", "c d"]) == 0.0
    (tmp_path / "transcripts.tsv").write_text("file\treference\nx.wav\thello there\n")
    (tmp_path / "x.wav").write_bytes(b"")
    assert bench.references_near(tmp_path / "x.wav") == {"x.wav": "hello there"}
    row = {"clips": [{"text": "Hello, there!", "reference": "hello there"}, {"text": "x", "reference": None}]}
    bench.score_row(row, bench.text_normalizer()[1])
    assert row["wer"] == 0.0 and row["wer_clips"] == 1 and row["clips"][1]["wer"] is None


def test_split_model_parts_are_joined_once(tmp_path):
    a, b = tmp_path / "p1", tmp_path / "p2"
    a.mkdir(), b.mkdir()
    (a / "model.bin.part1").write_bytes(b"abc")
    (b / "model.bin.part2").write_bytes(b"def")
    (a / "config.json").write_text("{}")
    (a / "tokenizer.json").write_text("{}")
    target = bench.join_model_parts([a / "model.bin.part1", b / "model.bin.part2"], tmp_path / "joined")
    assert (target / "model.bin").read_bytes() == b"abcdef"
    assert (target / "config.json").is_file() and (target / "tokenizer.json").is_file()
    mtime = (target / "model.bin").stat().st_mtime_ns
    bench.join_model_parts([a / "model.bin.part1", b / "model.bin.part2"], tmp_path / "joined")
    assert (target / "model.bin").stat().st_mtime_ns == mtime
