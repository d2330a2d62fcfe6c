"""`max-whisper bench`: the JSON it produces, on one short referenced clip; no timing thresholds."""

from __future__ import annotations

import json

import numpy as np
import pytest

from max_whisper import bench
from support import SHARED_AUDIO, has_module, requires_reference, requires_shared_audio

CLIP = SHARED_AUDIO / "librivox-0880.wav"
ENVIRONMENT_KEYS = {
    "cpu_model",
    "cores",
    "cpu_features",
    "isa_variables",
    "python",
    "platform",
    "max",
    "max_accelerators",
    "torch",
    "openai_whisper",
    "faster_whisper",
    "ctranslate2",
    "device",
    "load_average",
}


def requested_backends() -> list[str]:
    """Every backend whose package is installed: a row that can't run then fails the test, not
    skips."""
    return (
        ["reference"]
        + (["max"] if has_module("max") else [])
        + (["faster-whisper-int8"] if has_module("faster_whisper") else [])
    )


def check_result(r: dict, backend: str) -> None:
    assert r["backend"] == backend and r["model"] == "tiny.en" and r["device"] == "cpu"
    assert r["audio_s"] == pytest.approx(3.0, abs=0.05)
    assert r["wall_s_median"] > 0 and 0 < r["wall_s_min"] <= r["wall_s_median"]
    assert len(r["wall_s_runs"]) == 1
    assert r["rtfx"] == pytest.approx(r["audio_s"] / r["wall_s_median"], rel=2e-3)
    assert r["encoder_ms_per_window"] > 0 and r["windows"] >= 1
    assert r["decoder_ms_per_token"] > 0 and r["tokens"] > 0
    if backend in ("max", "max-batched", "reference"):  # in max's encoder, the reference's decoder
        assert 0 < r["cross_kv_ms_per_window"] < r["encoder_ms_per_window"]
    else:
        assert r["cross_kv_ms_per_window"] is None
    assert isinstance(r["wer"], float) and 0.0 <= r["wer"] <= 1.0 and r["wer_clips"] == 1
    assert r["peak_rss_mb"] > 0 and r["load_s"] >= 0
    assert r["deterministic"] is True
    [clip] = r["clips"]
    assert clip["file"] == CLIP.name and clip["reference"] == "he was not an ill disposed young man"
    assert "young man" in clip["text"].lower() and 0.0 <= clip["wer"] <= 1.0


@pytest.fixture(scope="module")
def doc(models):
    if not CLIP.is_file():
        pytest.skip(f"{CLIP} is absent")
    return bench.run_bench(
        backends=requested_backends(),
        models=["tiny.en"],
        audio=[str(CLIP)],
        repeats=1,
        device="cpu",
        isolate=False,
        loader=lambda name, backend, device: models.get(name, backend),
        log=lambda message: None,
        workloads=["short"],
    )


@requires_shared_audio
@requires_reference
def test_bench_document(doc):
    json.loads(json.dumps(doc))  # plain JSON all the way down
    assert doc["schema"] == bench.SCHEMA
    assert ENVIRONMENT_KEYS <= set(doc["environment"])
    env = doc["environment"]
    assert env["cores"] >= 1 and env["cpu_model"] and env["device"] == "cpu"
    settings = doc["settings"]
    assert (
        settings["language"] == "en"
        and settings["beam_size"] == 1
        and settings["temperature"] == 0.0
    )
    assert settings["condition_on_previous_text"] is False and settings["repeats"] == 1
    assert doc["audio"]["referenced"] == 1 and doc["audio"]["files"][0]["file"] == CLIP.name
    assert doc["errors"] == [] and doc["skipped"] == []
    rows = [r["backend"] for r in doc["results"]]
    expected = [
        row for b in requested_backends() for row in ([b, "max-batched"] if b == "max" else [b])
    ]
    assert rows == expected  # no row dropped (max brings its batched row)
    for r in doc["results"]:
        check_result(r, r["backend"])


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
    assert (
        main(["bench", "--from-json", str(saved), "--markdown", "--chart", str(tmp_path / "c.png")])
        == 0
    )
    assert "| reference | tiny.en |" in capsys.readouterr().out
    assert (tmp_path / "c.png").is_file()


@requires_shared_audio
@pytest.mark.skipif(not has_module("faster_whisper"), reason="faster-whisper is not installed")
def test_isolated_row_in_a_subprocess():
    """The default mode: a fresh process per row, reporting its own peak RSS and warm-start time;
    the rows' passes taken in turn."""
    if not CLIP.is_file():
        pytest.skip(f"{CLIP} is absent")
    doc = bench.run_bench(
        backends=["faster-whisper-int8", "faster-whisper-int8-batched"],
        models=["tiny.en"],
        audio=[str(CLIP)],
        repeats=2,
        device="cpu",
        log=lambda message: None,
        workloads=["short"],
    )
    assert doc["errors"] == [] and doc["settings"]["isolation"].startswith("subprocess")
    assert doc["settings"]["pass_order"].startswith("rows in turn")
    sequential, batched = doc["results"]
    assert len(sequential["wall_s_runs"]) == len(batched["wall_s_runs"]) == 2
    for r in (sequential, batched):
        assert (
            r["warm_start_s"] > 0
            and r["peak_rss_mb"] > 0
            and r["rss_scope"].startswith("subprocess")
        )
        assert r["rtfx"] > 0 and 0.0 <= r["wer"] <= 1.0 and r["workload"] == "short"
    assert sequential["tokens"] > 0 and sequential["decoder_ms_per_token"] > 0
    assert sequential["cross_kv_ms_per_window"] is None  # CTranslate2's: not timed apart
    assert (
        batched["backend"] == "faster-whisper-int8-batched"
        and batched["decoder_ms_per_token"] is None
    )
    assert "young man" in batched["clips"][0]["text"].lower()


@requires_shared_audio
@pytest.mark.skipif(not has_module("faster_whisper"), reason="faster-whisper is not installed")
def test_a_served_row_that_cannot_load_says_why(tmp_path):
    """A row whose model folder holds no model: its process answers with the error and exits,
    instead of leaving the bench waiting."""
    from max_whisper.bench.run import _row_spec
    from max_whisper.bench.worker import RowProcess

    (row,), _ = bench.plan_rows(["faster-whisper-int8"], "cpu", bench.GpuInfo())
    spec = _row_spec(row, "tiny.en", bench.DecodeSettings(), [str(CLIP)], ct2_folder=str(tmp_path))
    process = RowProcess(spec)
    try:
        assert "error" in process.ready and "model" in process.ready["error"].lower()
        assert "error" in process.timed_pass()  # it has exited: no pass, and no hang
    finally:
        process.close()


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
    np.testing.assert_allclose(audio[: len(first)], first, atol=1e-4)  # 16-bit PCM
    pause = audio[len(first) : len(first) + int(bench.LONG_FORM_PAUSES_S[0] * 16000)]
    assert len(pause) and np.abs(pause).max() == 0


@requires_shared_audio
def test_long_form_file_has_the_references_of_its_clips(tmp_path):
    """Made of the clips with a reference (one without is left out), it has theirs, in turn."""
    from max_whisper.audio import load_audio

    referenced = [SHARED_AUDIO / "librivox-0880.wav", SHARED_AUDIO / "librivox-0930.wav"]
    unreferenced = SHARED_AUDIO / "common_voice_en_651325.mp3"
    path = bench.long_form_file([unreferenced, *referenced], tmp_path, seconds=25)
    references = [bench.read_references(SHARED_AUDIO)[p.name] for p in referenced]
    [clip] = bench.load_clips([path])
    assert clip.reference.startswith(" ".join(references + references[:1]) + " ")
    pieces = sum(clip.reference.count(r) for r in references)
    pauses = bench.LONG_FORM_PAUSES_S
    seconds = [len(load_audio(p)) / 16000 for p in referenced]
    assert clip.seconds == pytest.approx(
        sum(seconds[i % 2] + pauses[i % len(pauses)] for i in range(pieces)), abs=0.01
    )


def test_batched_faster_whisper_row():
    none = bench.GpuInfo()
    rows, _ = bench.plan_rows(["faster-whisper"], "cpu", none)
    assert [(r.name, r.backend, r.batched) for r in rows] == [
        ("faster-whisper-int8", "int8", False),
        ("faster-whisper-fp32", "fp32", False),
        ("faster-whisper-int8-batched", "int8", True),
    ]
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
    row = {
        "clips": [
            {"text": "Hello, there!", "reference": "hello there"},
            {"text": "x", "reference": None},
        ]
    }
    bench.score_row(row, bench.text_normalizer()[1])
    assert row["wer"] == 0.0 and row["wer_clips"] == 1 and row["clips"][1]["wer"] is None


def test_split_model_parts_are_joined_once(tmp_path):
    a, b = tmp_path / "p1", tmp_path / "p2"
    a.mkdir(), b.mkdir()
    (a / "model.bin.part1").write_bytes(b"abc")
    (b / "model.bin.part2").write_bytes(b"def")
    (a / "config.json").write_text("{}")
    (a / "tokenizer.json").write_text("{}")
    target = bench.join_model_parts(
        [a / "model.bin.part1", b / "model.bin.part2"], tmp_path / "joined"
    )
    assert (target / "model.bin").read_bytes() == b"abcdef"
    assert (target / "config.json").is_file() and (target / "tokenizer.json").is_file()
    mtime = (target / "model.bin").stat().st_mtime_ns
    bench.join_model_parts([a / "model.bin.part1", b / "model.bin.part2"], tmp_path / "joined")
    assert (target / "model.bin").stat().st_mtime_ns == mtime


def test_audio_files_and_references_of_a_folder(tmp_path):
    assert (
        bench.audio_files(tmp_path / "absent") == []
        and bench.read_references(tmp_path / "absent") == {}
    )
    for name in ("b.wav", "a.FLAC", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "transcripts.tsv").write_text("file\treference\na.FLAC\thi there\nb.wav\t\n")
    assert [p.name for p in bench.audio_files(tmp_path)] == ["a.FLAC", "b.wav"]
    assert bench.read_references(tmp_path) == {
        "a.FLAC": "hi there"
    }  # rows without a reference left out


# -- the other modes -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "argv",
    [
        ["--steps", "3"],  # a stages option in the systems mode
        ["--mode", "stages", "--chart", "x.png"],  # a systems option in another mode
        ["--mode", "stages", "--condition-on-previous-text"],
        ["--mode", "stages", "--minutes", "1"],  # another mode's option
        ["--mode", "stages", "--backends", "hybrid"],
        ["--mode", "compile", "--backends", "reference"],
        ["--mode", "memory", "--models", "tiny.en,base"],
    ],
)
def test_mode_options_are_checked(argv, capsys):
    from max_whisper.cli import main

    assert main(["bench", *argv]) != 0
    assert "error" in capsys.readouterr().err


def test_stages_mode_times_each_backend_in_its_own_process():
    from max_whisper.bench.stages import run_stages

    report = run_stages(["tiny.en"], ["max"], steps=2, runs=1, beam=2, encoder_runs=1)
    assert report["steps"] == 2 and report["runs"] == 1 and report["clip"] == "librivox-0870.wav"
    [entry] = report["models"]
    part = entry["max"]
    assert "error" not in part, part.get("error")
    assert part["encoder_ms_per_window"]["median"] > 0 and part["encoder_ms_per_window"]["n"] == 1
    # MAX's encoder graph computes the cross K/V with the features: timed alone, not added
    assert 0 < part["cross_kv_ms_per_window"]["median"] < part["encoder_ms_per_window"]["median"]
    assert part["encoder_and_cross_kv_ms"] == part["encoder_ms_per_window"]["median"]
    for name, group in (("greedy", 1), ("beam2", 2)):
        decoder = part["decoder"][name]
        assert (
            decoder["group"] == group
            and decoder["per_token_ms"]["n"] == 2
            and decoder["prefill_ms"]["n"] == 1
        )
    assert part["idle_gate_timed_out"] == 0


def test_compile_mode_child_on_the_warm_cache():
    """The child of --mode compile (the parent's cold run compiles for minutes: not here)."""
    from max_whisper.bench import compile_time

    result = compile_time.child(
        {"model": "tiny.en", "float64_blocks": None, "runs": 2, "clip": None}
    )
    assert result["start_s"] > 0 and result["compile_s"] >= 0 and result["float64_blocks"] == 0
    assert len(result["ms_per_window"]) == 2 and min(result["ms_per_window"]) > 0


@requires_shared_audio
def test_memory_mode_reports_peak_rss_of_a_fresh_process():
    from max_whisper.bench.memory import run_memory

    result = run_memory(minutes=0.1, model="tiny.en", backend="max", audio=[str(CLIP)])
    assert result["audio_s"] == pytest.approx(6.0) and result["segments"] >= 1
    assert result["peak_rss_mb"] >= result["peak_rss_mb_after_load"] > 0 and result["rtfx"] > 0
