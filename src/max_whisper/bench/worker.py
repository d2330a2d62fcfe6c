"""The bench's child processes: each row (and each part of the other modes) runs in a fresh Python.

    python -m max_whisper.bench SPEC.json OUT.json

runs one task described by SPEC (a JSON object; its "task" names it, a systems row when absent) and
writes its result, or {"error": ...}, to OUT. The child's stdout and stderr go to the parent's
stderr, so that the parent's stdout carries only its JSON.

    python -m max_whisper.bench --serve SPEC.json

loads the systems row SPEC and warms it up, then runs one timed pass over its clips each time its
stdin says `pass`, until `finish` (RowProcess: the systems mode takes every row's passes in turn).
It answers each with a JSON line on its stdout; anything else it prints goes to stderr.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import TextIO

from ..processes import child_env
from .clips import load_clips
from .measure import cross_kv_ms, peak_rss_mb, timed_pass
from .runners import Pass, make_runner
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


class RowProcess:
    """A systems row served pass by pass in a fresh process (`--serve`). `ready` is what its load
    reported (load_s, RSS, graphs compiled), or {"error"}.

    Between its passes the process is stopped (SIGSTOP, where there is one): an idle runtime's
    threads still wake now and then, and they would take time from the row being timed."""

    def __init__(self, spec: dict):
        self._tmp = tempfile.TemporaryDirectory(prefix="max-whisper-bench-")
        spec_path = Path(self._tmp.name) / "spec.json"
        spec_path.write_text(json.dumps(spec))
        self._proc = subprocess.Popen(
            [sys.executable, "-m", MODULE, "--serve", str(spec_path)],
            env=child_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=sys.stderr.fileno() if _has_fileno(sys.stderr) else subprocess.DEVNULL,
            text=True,
        )
        self.ready = self._answer()
        self._signal("SIGSTOP")

    def timed_pass(self) -> list[Pass] | dict:
        """One timed pass over the row's clips, or {"error"}."""
        self._signal("SIGCONT")
        answer = self._ask("pass")
        self._signal("SIGSTOP")
        return [Pass(**p) for p in answer["pass"]] if "pass" in answer else answer

    def finish(self) -> dict:
        """{"peak_rss_mb"} of the process, which then exits."""
        self._signal("SIGCONT")
        answer = self._ask("finish")
        self.close()
        return answer

    def _signal(self, name: str) -> None:
        if hasattr(signal, name) and self._proc.poll() is None:
            self._proc.send_signal(getattr(signal, name))

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()  # SIGKILL ends a stopped process too
        self._proc.wait()
        for stream in (self._proc.stdin, self._proc.stdout):
            if not stream.closed:
                stream.close()
        self._tmp.cleanup()

    def _ask(self, command: str) -> dict:
        try:
            self._proc.stdin.write(command + "\n")
            self._proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # it has exited: _answer says how
        return self._answer()

    def _answer(self) -> dict:
        line = self._proc.stdout.readline()
        if not line:
            return {"error": f"the worker process exited with code {self._proc.wait()}"}
        return json.loads(line)


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


def _load_row(spec: dict):
    """(the row's runner, loaded; its load time and RSS, and graphs compiled while loading)."""
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
    return runner, out


def row_child(spec: dict) -> dict:
    """One systems row loaded in a fresh process, nothing else: its load time (a cold compile
    when the caches are empty). Its passes are timed by serve_row."""
    _, out = _load_row(spec)
    out["peak_rss_mb"] = _r(peak_rss_mb(), 1)
    return out


def _worker(spec: dict) -> dict:
    task = spec.get("task")
    if task is None:
        return row_child(spec)
    module = importlib.import_module(f"{__package__}.{TASKS[task]}")
    return module.child(spec)


def serve_row(spec: dict, commands: TextIO, answers: TextIO) -> int:
    """Load the row and warm it up, then answer `pass` and `finish` commands (see the module)."""

    def answer(result: dict) -> None:
        answers.write(json.dumps(result) + "\n")
        answers.flush()

    try:
        runner, loaded = _load_row(spec)
        clips = load_clips(spec["audio"])
        timed_pass(runner, clips)  # the warm-up
        loaded["cross_kv_ms_per_window"] = cross_kv_ms(runner, clips)
    except Exception as exc:
        answer(_failure(exc))
        return 1
    answer(loaded)
    for line in commands:
        if line.strip() == "finish":
            answer({"peak_rss_mb": _r(peak_rss_mb(), 1)})
            return 0
        try:
            answer({"pass": [asdict(p) for p in timed_pass(runner, clips)]})
        except Exception as exc:
            answer(_failure(exc))
            return 1
    return 0


def _failure(exc: Exception) -> dict:
    import traceback

    traceback.print_exc(file=sys.stderr)
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return {"error": f"{type(exc).__name__}: {first_line}"}


def worker_main(argv: list[str]) -> int:
    if argv[0] == "--serve":
        spec = json.loads(Path(argv[1]).read_text())
        answers = os.fdopen(os.dup(sys.stdout.fileno()), "w")  # the answers' own copy of stdout
        os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # any other print goes to stderr
        return serve_row(spec, sys.stdin, answers)
    spec_path, out_path = argv
    spec = json.loads(Path(spec_path).read_text())
    try:
        result = _worker(spec)
    except Exception as exc:
        result = _failure(exc)
    Path(out_path).write_text(json.dumps(result))
    return 1 if "error" in result else 0
