"""`max-whisper batch`: a folder of real clips with three bad files, its outputs against
`max-whisper transcribe`'s, resuming after a kill, manifests as input, and the same job on a Ray
cluster started here on 127.0.0.1."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path

import pytest

from support import (
    REPO_ROOT,
    interruptible,
    requires,
    requires_shared_audio,
    run_cli,
    shared_clip,
    subprocess_env,
)

pytestmark = requires_shared_audio

GOOD = {  # clip name prefix -> where it goes in the corpus (a subfolder: the tree is mirrored)
    "LJ002-0020": "",
    "librivox-0880": "",
    "common_voice_en_651325": "more",
    "librivox-0930": "more",
}
BAD = ("corrupt.mp3", "notaudio.wav", "empty.wav")
FORMATS = "txt,srt,vtt,tsv,json"


# The command, in a process that then checks that only a --ray run imported Ray (the cluster
# extra is never imported on the default path).
RUN_BATCH = (
    "import sys; from max_whisper.cli import main; rc = main(['batch', *sys.argv[1:]]); "
    "ray = 'ray' in sys.modules; sys.exit(rc if ray == any(a.startswith('--ray') "
    "for a in sys.argv) else print('ray imported: ' + str(ray), file=sys.stderr) or 99)"
)


def batch_args(*args) -> list[str]:
    return [sys.executable, "-c", RUN_BATCH, *map(str, args), "--no-progress"]


def batch_cli(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        batch_args(*args),
        capture_output=True,
        text=True,
        timeout=600,
        env=env or subprocess_env(),
        cwd=REPO_ROOT,
    )


def read_manifest(out_dir: Path, compacted: bool = True) -> dict[str, dict]:
    """{file name: its record}; a run that ended (not killed) left one line per file."""
    lines = (out_dir / "manifest.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    if compacted:
        assert len({r["path"] for r in records}) == len(records), "one line per file"
    return {Path(r["path"]).name: r for r in records}  # the last line of a file is its record


def ok_lines(manifest: Path) -> int:
    return manifest.read_text().count('"ok"') if manifest.exists() else 0


def output_files(out_dir: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(out_dir)): p.read_bytes()
        for p in sorted(out_dir.rglob("*"))
        if p.is_file() and p.name != "manifest.jsonl"
    }


def close_json(a, b) -> bool:
    """Equal JSON values, floats within 1e-5: batches made up differently run different decoder
    graphs (a few-rows step or a wide one), which moves a log-probability in its 6th digit, never
    a token or a time."""
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= 1e-5 * max(1.0, abs(a), abs(b))
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(close_json(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(close_json(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def same_output(name: str, got: bytes, expected: bytes) -> bool:
    """Text formats byte for byte; JSON by close_json."""
    if name.endswith(".json"):
        return close_json(json.loads(got), json.loads(expected))
    return got == expected


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Four short shared clips (two in a subfolder), a corrupt mp3, a text file named .wav and a
    WAV with no samples."""
    root = tmp_path_factory.mktemp("corpus")
    for prefix, folder in GOOD.items():
        (root / folder).mkdir(exist_ok=True)
        clip = shared_clip(prefix)
        shutil.copy(clip, root / folder / clip.name)
    mp3 = shared_clip("common_voice_en_651325").read_bytes()
    (root / "corrupt.mp3").write_bytes(bytes(b ^ 0x5A for b in mp3[:4000]))
    (root / "notaudio.wav").write_text("these are words, not audio\n")
    with wave.open(str(root / "empty.wav"), "wb") as empty:
        empty.setnchannels(1)
        empty.setsampwidth(2)
        empty.setframerate(16000)
    return root


@pytest.fixture(scope="module")
def local_run(corpus, tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path_factory.mktemp("batch-local")
    return batch_cli(corpus, "-o", out, "-f", FORMATS), out


def test_outputs_equal_transcribe_and_bad_files_are_recorded(corpus, local_run, tmp_path):
    proc, out = local_run
    assert proc.returncode == 1, proc.stderr
    assert "3 of 7 files failed" in proc.stderr
    assert "Traceback" not in proc.stderr

    good = [p for p in sorted(corpus.rglob("*")) if p.is_file() and p.name not in BAD]
    transcribed = run_cli("transcribe", *good, "-f", "all", "-o", tmp_path, "--no-progress")
    assert transcribed.returncode == 0, transcribed.stderr
    outputs = output_files(out)
    assert len(outputs) == 5 * len(good)
    for clip in good:
        relative = clip.relative_to(corpus).with_suffix("")
        for ext in FORMATS.split(","):
            expected = (tmp_path / f"{clip.stem}.{ext}").read_bytes()
            name = f"{relative}.{ext}"
            assert same_output(name, outputs[name], expected), (name, outputs[name], expected)

    records = read_manifest(out)
    assert {name: r["status"] for name, r in records.items()} == {
        **{clip.name: "ok" for clip in good},
        **{name: "error" for name in BAD},
    }
    for clip in good:
        record = records[clip.name]
        assert record["language"] == "en"
        assert record["duration"] > 0 and record["seconds"] > 0
        assert sorted(record["outputs"]) == sorted(
            f"{clip.relative_to(corpus).with_suffix('')}.{ext}" for ext in FORMATS.split(",")
        )
    assert "not an audio file" in records["corrupt.mp3"]["error"]
    assert "not an audio file" in records["notaudio.wav"]["error"]
    assert "no audio samples" in records["empty.wav"]["error"]
    for name in BAD:
        assert "\n" not in records[name]["error"] and not records[name]["outputs"]


def test_rerun_skips_what_is_done_and_other_options_redo_it(corpus, local_run, tmp_path):
    _, first = local_run
    out = tmp_path / "out"
    shutil.copytree(first, out)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.json")}
    again = batch_cli(corpus, "-o", out, "-f", FORMATS, "--verbose")
    assert again.returncode == 1
    assert "0 transcribed, 4 done before, 3 failed" in again.stderr
    assert not again.stdout.strip()  # --verbose prints each transcribed file: none was
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.json")} == before
    statuses = {name: r["status"] for name, r in read_manifest(out).items()}
    assert sorted(statuses.values()) == ["error"] * 3 + ["skipped"] * 4

    # other options: that file again
    other = batch_cli(corpus / "LJ002-0020.wav", "-o", out, "-f", "txt", "--beam-size", "1")
    assert other.returncode == 0 and "1 transcribed, 0 done before" in other.stderr
    assert read_manifest(out)["LJ002-0020.wav"]["outputs"] == ["LJ002-0020.txt"]


def test_interrupted_and_killed_runs_resume_without_redoing_files(local_run, tmp_path):
    """Ctrl-C halfway, rerun, SIGKILL halfway through the rest, rerun: each file transcribed
    once, no partial output left, the outputs those of an uninterrupted run."""
    _, reference_out = local_run
    reference = output_files(reference_out)
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    corpus.mkdir()
    for n in range(2):  # 8 files done one at a time, so that a kill lands halfway
        for prefix in GOOD:
            clip = shared_clip(prefix)
            shutil.copy(clip, corpus / f"{n}-{clip.name}")
    args = batch_args(corpus, "-o", out, "-f", FORMATS, "--batch-size", "1", "--verbose")
    transcribed: list[str] = []
    for sig in (signal.SIGINT, signal.SIGKILL, None):
        done_before = set(read_manifest(out, compacted=False)) if out.exists() else set()
        proc = subprocess.Popen(
            args,
            preexec_fn=interruptible,
            env=subprocess_env(),
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        before = ok_lines(out / "manifest.jsonl")
        while sig and proc.poll() is None:
            if ok_lines(out / "manifest.jsonl") > before:
                proc.send_signal(sig)
                break
            time.sleep(0.02)
        stdout, stderr = proc.communicate(timeout=300)
        transcribed += [Path(line.split(":")[0]).name for line in stdout.splitlines()]
        records = read_manifest(out, compacted=sig != signal.SIGKILL)
        done = {n for n, r in records.items() if r["status"] in ("ok", "skipped")}
        if sig == signal.SIGINT:
            assert proc.returncode == 130 and "interrupted" in stderr, stderr
        if sig is not None:
            assert len(done_before) < len(done) < 8, "the kill landed halfway"
            assert {n for n, r in records.items() if r["status"] == "skipped"} == done_before
        expected = {f"{Path(n).stem}.{ext}" for n in done for ext in FORMATS.split(",")}
        left = {p.name for p in out.rglob("*") if p.is_file() and p.name != "manifest.jsonl"}
        if sig != signal.SIGKILL:  # SIGKILL may leave a temporary file: the next run removes it
            assert left == expected, left ^ expected
    assert proc.returncode == 0, stderr
    # no file transcribed twice (a file finished just as a signal lands may print nothing: its
    # record is in the manifest, so it is not redone), and every file done in the end
    assert len(transcribed) == len(set(transcribed)), transcribed
    assert set(transcribed) <= {p.name for p in corpus.iterdir()}
    statuses = {r["status"] for r in read_manifest(out).values()}
    assert len(read_manifest(out)) == 8 and statuses <= {"ok", "skipped"}, statuses
    for name, content in output_files(out).items():
        original = name.split("-", 1)[1]  # 1-LJ002-0020.txt is LJ002-0020's
        expected = reference[str(Path(GOOD[Path(original).stem]) / original)]
        assert same_output(name, content, expected), (name, content, expected)


def test_manifests_and_globs_as_input(corpus, tmp_path):
    from max_whisper.batch.sources import collect_items

    clip = corpus / "more" / "librivox-0930.wav"
    (tmp_path / "list.txt").write_text(f"# a comment\n{clip}\n\n../{corpus.name}/missing.wav\n")
    items = collect_items([tmp_path / "list.txt"])
    assert [i.path for i in items] == [
        str(clip),
        str(tmp_path.parent / corpus.name / "missing.wav"),
    ]

    (tmp_path / "list.csv").write_text(
        f"language,path,prompt\nFrench,{clip},Bonjour\n,{corpus / 'LJ002-0020.wav'},\n"
    )
    items = collect_items([tmp_path / "list.csv"])
    assert [(i.language, i.prompt) for i in items] == [("French", "Bonjour"), (None, None)]

    (tmp_path / "list.jsonl").write_text(json.dumps({"audio": str(clip), "language": "en"}))
    assert collect_items([tmp_path / "list.jsonl"])[0].language == "en"

    items = collect_items([str(corpus / "**" / "*.wav")])
    assert sorted(i.relative for i in items) == sorted(
        str(p.relative_to(corpus).with_suffix("")) for p in corpus.rglob("*.wav")
    )

    (tmp_path / "bad.jsonl").write_text("{not json\n")
    from max_whisper.errors import UsageError

    with pytest.raises(UsageError, match="line 1 is not JSON"):
        collect_items([tmp_path / "bad.jsonl"])
    with pytest.raises(UsageError, match="no file matches"):
        collect_items([str(corpus / "*.nothing")])


def test_python_api_with_per_file_prompt(models, corpus, tmp_path):
    from max_whisper.batch import run

    clip = corpus / "LJ002-0020.wav"
    (tmp_path / "list.jsonl").write_text(
        json.dumps({"path": str(clip), "prompt": "The year was 1813."}) + "\n"
    )
    summary = run(tmp_path / "list.jsonl", tmp_path / "out", formats="json", model="tiny.en")
    assert (summary.total, summary.ok, summary.failed, summary.interrupted) == (1, 1, 0, False)
    result = json.loads((tmp_path / "out" / "LJ002-0020.json").read_text())
    expected = models.get("tiny.en", "max").transcribe(clip, initial_prompt="The year was 1813.")
    assert result["text"] == expected["text"]
    assert summary.records[0].outputs == ["LJ002-0020.json"]


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["*.nothing"], "no file matches"),
        ([".", "-f", "txt,doc"], "unknown output format 'doc'"),
        ([".", "--batch-size", "0"], "batch_size must be at least 1"),
    ],
)
def test_bad_options_give_one_line_error(corpus, tmp_path, args, fragment):
    proc = subprocess.run(
        batch_args(*args, "-o", tmp_path),
        capture_output=True,
        text=True,
        env=subprocess_env(),
        cwd=corpus,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and fragment in proc.stderr, proc.stderr
    assert not (tmp_path / "manifest.jsonl").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@requires("ray")
def test_ray_cluster_gives_the_same_outputs_and_statuses(corpus, local_run, tmp_path):
    _, local_out = local_run
    port = _free_port()
    log = tmp_path / "ray-head.log"
    ray_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # its socket paths must stay short
    env = subprocess_env(  # this cluster's own token: only these processes can use it
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=secrets.token_hex(32),
    )
    head = subprocess.Popen(
        ["ray", "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}"]
        + ["--num-cpus=3", "--include-dashboard=false", "--disable-usage-stats"]
        + [f"--temp-dir={ray_dir}"],
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        while "Ray runtime started" not in log.read_text():
            assert head.poll() is None, log.read_text()
            time.sleep(0.2)
        out = tmp_path / "out"
        proc = batch_cli(
            corpus, "-o", out, "-f", FORMATS, "--workers", "2", f"--ray=127.0.0.1:{port}", env=env
        )
        assert proc.returncode == 1, proc.stderr
        assert "3 of 7 files failed" in proc.stderr
        got, expected = output_files(out), output_files(local_out)
        assert got.keys() == expected.keys()
        assert all(same_output(n, got[n], expected[n]) for n in got), "outputs differ"
        statuses = {n: r["status"] for n, r in read_manifest(out).items()}
        assert statuses == {n: r["status"] for n, r in read_manifest(local_out).items()}
    finally:
        head.send_signal(signal.SIGTERM)  # --block: the head stops every Ray process it started
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        shutil.rmtree(ray_dir, ignore_errors=True)
