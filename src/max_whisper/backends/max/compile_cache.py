"""Compiled MAX graphs cached on disk as .mef files.

A cold compile costs 30-190 s per graph on a small CPU; loading an exported .mef costs ~0.02 s.
The key covers everything that changes the compiled code (graph kind, dims, dtype, MAX version,
device, CPU model and flags, the x86-64 level asked for, and a hash of the source files that build
the graph, so that a changed builder can never load a stale file) and nothing about weight values:
weights are fed at load time through the weights registry, so one file serves every model with the
same dims.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import IO

from max.engine import CompiledModel, InferenceSession, Model, read
from max.graph import Graph

from ...cpu import cpu_target, cpuinfo


def source_hash(*files: str | os.PathLike) -> str:
    """A hash of the source files that build a graph (and of the weight layouts they expect):
    part of that graph's signature."""
    digest = hashlib.sha256()
    for path in map(Path, files):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def cache_dir() -> Path:
    """$MAX_WHISPER_CACHE, else $XDG_CACHE_HOME/max-whisper, else ~/.cache/max-whisper; graphs
    live in graphs/."""
    root = os.environ.get("MAX_WHISPER_CACHE")
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        root = Path(xdg) / "max-whisper"
    return Path(root) / "graphs"


def _cpu_identity() -> str:
    """CPU model name and feature flags: compiled kernels use whatever instructions this CPU has."""
    if info := cpuinfo():
        return json.dumps(info, sort_keys=True)
    import platform

    return f"{platform.machine()} {platform.processor()}"


def _device_identity(session: InferenceSession) -> list[str]:
    identity = []
    for device in session.devices:
        if device.is_host:
            identity.append("cpu")
        else:
            identity.append(f"{device.api}:{device.architecture_name}")
    return identity


def cache_key(session: InferenceSession, signature: Mapping) -> str:
    material = {
        "signature": dict(signature),
        "max": importlib.metadata.version("max"),
        "devices": _device_identity(session),
        "cpu": _cpu_identity(),
    }
    if target := cpu_target():
        material["cpu_target"] = target
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()[
        :32
    ]


def _say(message: str) -> None:
    print(f"max-whisper: {message}", file=sys.stderr, flush=True)


@contextmanager
def _progress(label: str, estimate_s: float, target: str) -> Iterator[None]:
    """One line before a cold compile, a ticking counter on a terminal, and the time taken after."""
    _say(f"compiling {label} graph for this {target} (first run only, about {estimate_s:.0f} s)…")
    start = time.perf_counter()
    done = threading.Event()

    def tick() -> None:
        while not done.wait(1.0):
            print(f"\r  {time.perf_counter() - start:4.0f} s", end="", file=sys.stderr, flush=True)

    ticker = threading.Thread(target=tick, daemon=True) if sys.stderr.isatty() else None
    if ticker:
        ticker.start()
    try:
        yield
    finally:
        done.set()
        if ticker:
            ticker.join()
            print("\r" + " " * 12 + "\r", end="", file=sys.stderr)
    _say(f"compiled {label} in {time.perf_counter() - start:.0f} s")


@contextmanager
def _file_lock(f: IO, label: str) -> Iterator[None]:
    """Serialise compiles of one graph across processes: a second process waits, then finds the
    .mef."""
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _say(f"waiting for another process compiling the {label} graph…")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _read_cached(path: Path, warn: bool = True) -> CompiledModel | None:
    if not path.exists():
        return None
    try:
        return read(path)
    except (RuntimeError, ValueError) as error:  # empty, truncated or foreign file: compile again
        if warn:
            _say(f"ignoring unreadable cached graph {path.name} ({error})")
        return None


def cached_path(session: InferenceSession, signature: Mapping) -> Path:
    """Where the compiled graph for `signature` lives (or will live) in the cache."""
    return cache_dir() / f"{signature.get('graph', 'graph')}-{cache_key(session, signature)}.mef"


def compiled_graph(
    session: InferenceSession,
    build_graph: Callable[[], Graph],
    signature: Mapping,
    label: str,
    estimate_s: float = 60,
) -> tuple[CompiledModel, float]:
    """The compiled graph for `signature`, from the cache or compiled now.

    Returns (compiled model, seconds spent compiling: 0.0 on a cache hit).
    Initialise it with `session.init(compiled, weights_registry=...)`, as often as needed.
    """
    path = cached_path(session, signature)
    directory = path.parent
    if (compiled := _read_cached(path)) is not None:
        return compiled, 0.0

    try:
        directory.mkdir(parents=True, exist_ok=True)
        lock = _file_lock(open(path.with_suffix(".lock"), "a"), label)
        saving = True
    except OSError as error:  # unwritable cache: still work, just without saving
        _say(f"cannot use the graph cache at {directory} ({error}); compiling without saving")
        lock, saving = nullcontext(), False

    with lock:
        if saving and (compiled := _read_cached(path, warn=False)) is not None:
            return compiled, 0.0  # another process compiled it while we waited
        target = "CPU" if all(d.is_host for d in session.devices) else "GPU"
        start = time.perf_counter()
        with _progress(label, estimate_s, target):
            compiled = session.compile(build_graph())
        seconds = time.perf_counter() - start
        if saving:
            _export(compiled, path)
    return compiled, seconds


def _export(compiled: CompiledModel, path: Path) -> None:
    """Write the .mef under a temporary name, then rename: readers never see a partial file."""
    temporary = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        compiled.export_mef(temporary)
        os.replace(temporary, path)
    except (OSError, RuntimeError) as error:
        _say(f"could not save the compiled graph to {path} ({error})")
        temporary.unlink(missing_ok=True)


def load_compiled(
    session: InferenceSession,
    build_graph: Callable[[], Graph],
    signature: Mapping,
    weights_registry: Mapping,
    label: str,
    estimate_s: float = 60,
) -> Model:
    """Compile (or fetch from the cache) and initialise one graph with its weights."""
    compiled, _ = compiled_graph(session, build_graph, signature, label, estimate_s)
    return session.init(compiled, weights_registry=weights_registry)
