"""The bench's child processes: each row (and each part of the other modes) runs in a fresh Python.

    python -m max_whisper.bench SPEC.json OUT.json

runs one task described by SPEC (a JSON object; its "task" names it, a systems row when absent) and
writes its result, or {"error": ...}, to OUT. The child's stdout and stderr go to the parent's
stderr, so that the parent's stdout carries only its JSON.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..processes import child_env
from .clips import load_clips
from .measure import measure, peak_rss_mb
from .runners import make_runner
from .settings import MAX_BACKENDS, DecodeSettings, Row, _r

MODULE = "max_whisper.bench"  # run as `python -m MODULE SPEC OUT` (its __main__ calls worker_main)
TASKS = {
    "stages": "stages",
    "compile": "compile_time",
    "memory": "memory",
}  # task -> module with child(spec)


# -- the parent's side -----------------------------------------------------------------------------
def empty_caches(folder: str | os.PathLike) -> dict[str, str]:
    """Environment for a cold compile: our graph cache and MAX's own cache in (empty) folders
    under `folder`."""
    return {
        "MAX_WHISPER_CACHE": str(Path(folder) / "max-whisper"),
        "MODULAR_DERIVED_PATH": str(Path(folder) / "modular"),
    }


def run_worker(spec: dict, env: dict[str, str] | None = None, timeout: float | None = None) -> dict:
    """Run the task `spec` in a fresh Python process (`env` added to ours); its result, or
    {"error"}."""
    with tempfile.TemporaryDirectory(prefix="max-whisper-bench-") as tmp:
        spec_path, out_path = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec_path.write_text(json.dumps(spec))
        cmd = [sys.executable, "-m", MODULE, str(spec_path), str(out_path)]
        try:
            proc = subprocess.run(
                cmd,
                env=child_env(env),
                stdout=sys.stderr.fileno() if _has_fileno(sys.stderr) else subprocess.DEVNULL,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout:.0f} s"}
        if out_path.is_file():
            return json.loads(out_path.read_text())
        return {"error": f"the worker process exited with code {proc.returncode} and no result"}


def _has_fileno(stream) -> bool:
    try:
        stream.fileno()
        return True
    except (AttributeError, OSError, ValueError):
        return False


# -- the child's side ------------------------------------------------------------------------------
def _graphs_newer_than(moment: float) -> int:
    """.mef files written to the graph cache since `moment` (time.time()): a compile happened."""
    try:
        from ..backends.max.compile_cache import cache_dir

        return sum(1 for p in cache_dir().glob("*.mef") if p.stat().st_mtime >= moment - 1)
    except Exception:
        return 0


def row_child(spec: dict) -> dict:
    """One systems row in a fresh process: load (timed), then measure unless load_only."""
    row = Row(**spec["row"])
    settings = DecodeSettings(**spec["settings"])
    wall_clock = time.time()
    start = time.perf_counter()
    runner = make_runner(row, spec["model"], settings, spec.get("ct2_folder"))
    runner.load()
    load_s = time.perf_counter() - start
    out = {"load_s": _r(load_s, 3), "rss_after_load_mb": _r(peak_rss_mb(), 1)}
    if row.engine == "max-whisper" and row.backend in MAX_BACKENDS:
        out["graphs_compiled_at_load"] = _graphs_newer_than(wall_clock)
    if not spec.get("load_only"):
        clips = load_clips(spec["audio"])
        out.update(measure(runner, clips, spec["repeats"]))
    out["peak_rss_mb"] = _r(peak_rss_mb(), 1)
    return out


def _worker(spec: dict) -> dict:
    task = spec.get("task")
    if task is None:
        return row_child(spec)
    module = importlib.import_module(f"{__package__}.{TASKS[task]}")
    return module.child(spec)


def worker_main(argv: list[str]) -> int:
    spec_path, out_path = argv
    spec = json.loads(Path(spec_path).read_text())
    try:
        result = _worker(spec)
    except Exception as exc:
        import traceback

        traceback.print_exc(file=sys.stderr)
        result = {
            "error": f"{type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        }
    Path(out_path).write_text(json.dumps(result))
    return 1 if "error" in result else 0
