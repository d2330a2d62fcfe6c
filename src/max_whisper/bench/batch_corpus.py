"""Throughput of `max-whisper batch` on a corpus: files/hour and RTFx, for the local engine and for
Ray with 1 and 2 workers (a Ray instance on this machine).

    python -m max_whisper.bench.batch_corpus [--files 120] [--audio ../shared/audio]
        [--engines local,ray1,ray2] [--model tiny.en] [--batch-size 8] [--json OUT]

The corpus is the clips of --audio repeated (as links) up to --files files. Each engine runs in
its own process from an empty output folder, timed end to end: model loading, Ray's start,
decoding, writing.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..inputs import audio_files_in
from .clips import SHARED_AUDIO


def make_corpus(audio: str, files: int, folder: Path) -> list[Path]:
    clips = audio_files_in(audio)
    if not clips:
        raise SystemExit(f"no audio files in {audio}")
    corpus = []
    for n in range(files):
        clip = Path(clips[n % len(clips)]).resolve()
        link = folder / f"{n // len(clips):03d}" / clip.name
        link.parent.mkdir(exist_ok=True)
        link.symlink_to(clip)
        corpus.append(link)
    return corpus


def measure(engine: str, corpus_dir: Path, out_dir: Path, model: str, batch_size: int) -> dict:
    """One engine's run, in a fresh process (Ray cannot start where MAX is loaded)."""
    code = (
        "import json, sys; from max_whisper.bench.batch_corpus import measure_here; "
        "print(json.dumps(measure_here(*sys.argv[1:5], int(sys.argv[5]))))"
    )
    args = [engine, corpus_dir, out_dir, model, batch_size]
    proc = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)], stdout=subprocess.PIPE, text=True
    )
    if proc.returncode:
        return {"engine": engine, "error": f"exit status {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure_here(engine: str, corpus_dir, out_dir, model: str, batch_size: int) -> dict:
    from ..batch import run

    workers = int(engine[3:]) if engine.startswith("ray") else 1
    started = time.monotonic()
    summary = run(
        corpus_dir,
        out_dir,
        formats="txt",
        model=model,
        batch_size=batch_size,
        ray=True if engine.startswith("ray") else None,
        workers=workers,
    )
    wall = time.monotonic() - started
    return {
        "engine": engine,
        "files": summary.total,
        "failed": summary.failed,
        "audio_hours": round(summary.audio_seconds / 3600, 4),
        "wall_s": round(wall, 1),
        "files_per_hour": round(3600 * summary.ok / wall),
        "rtfx": round(summary.audio_seconds / wall, 2),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--audio", default=str(SHARED_AUDIO))
    p.add_argument("--files", type=int, default=120)
    p.add_argument("--engines", default="local,ray1,ray2")
    p.add_argument("--model", default="tiny.en")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--json", help="also write the result here")
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="max-whisper-batch-bench-") as tmp:
        corpus_dir = Path(tmp) / "corpus"
        corpus_dir.mkdir()
        make_corpus(args.audio, args.files, corpus_dir)
        for engine in args.engines.split(","):
            out_dir = Path(tmp) / f"out-{engine}"
            rows.append(measure(engine, corpus_dir, out_dir, args.model, args.batch_size))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    report = {"cpus": os.cpu_count(), "load_average": os.getloadavg(), "rows": rows}
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
