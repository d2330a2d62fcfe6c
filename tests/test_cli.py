"""The command line: a transcript on stdout, one-line errors (no traceback) on bad input, and the
allocator it runs on."""

import subprocess
import sys
import wave
from pathlib import Path

import pytest

from support import SAMPLE, one_error_line, requires_reference, run_cli, subprocess_env


def _zero_sample_wav(path: Path) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
    return path


@pytest.mark.parametrize("kind", ["missing", "text-as-wav", "empty", "zero-samples", "directory"])
def test_bad_audio_gives_one_line_error(tmp_path, kind):
    path = tmp_path / "input.wav"
    if kind == "text-as-wav":
        path.write_text("this is not audio\n" * 50)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "zero-samples":
        _zero_sample_wav(path)
    elif kind == "directory":
        path.mkdir()
    proc = run_cli("transcribe", path, "--backend", "reference")
    assert "input.wav" in one_error_line(proc)


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--model", "huge-v9"], "huge-v9"),
        (["--backend", "quantum"], "quantum"),
        (["--beam-size", "0"], "beam"),
        (["--language", "klingon"], "klingon"),
        (["--model", "/nonexistent/model.bin"], "model.bin"),
    ],
)
def test_bad_options_give_one_line_error(args, fragment):
    proc = run_cli("transcribe", SAMPLE, *args)
    assert fragment in one_error_line(proc)


@requires_reference
def test_transcribe_sample_prints_text():
    proc = run_cli("transcribe", str(SAMPLE), "--backend", "reference")
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout.strip().lower()
    assert "speech recognition" in text and "thank you for listening" in text, text


def _allocators(*args: str, **env: str) -> list[str]:
    """What `max-whisper doctor` says the process it ran in allocates with, started without any
    allocator of ours in its environment."""
    inherited = ("LD_PRELOAD", "MODULAR_MAX_ALLOCATOR", "MODULAR_MAX_ALLOCATOR_REEXEC")
    base = {k: v for k, v in subprocess_env().items() if k not in inherited}
    proc = subprocess.run(
        [sys.executable, *args, "doctor"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**base, **env},
    )
    assert proc.returncode == 0, proc.stderr
    return [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("allocator")]


def test_the_command_runs_on_maxs_jemalloc_unless_told_otherwise():
    """The command restarts itself once on the jemalloc MAX ships, as MAX's own command runs (its
    arguments kept); MODULAR_MAX_ALLOCATOR=system keeps the system's allocator."""
    assert _allocators("-m", "max_whisper") == ["jemalloc"]
    assert _allocators("-m", "max_whisper.cli") == ["jemalloc"]
    assert _allocators("-m", "max_whisper", MODULAR_MAX_ALLOCATOR="system") == ["system"]
