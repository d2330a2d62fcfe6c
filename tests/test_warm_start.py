"""A first run on a machine with no compiled graphs answers at once on NumPy while the MAX graphs
compile in the background; `warmup` and `doctor` see the cache."""

from __future__ import annotations

import os
import signal
import time

import pytest

from support import SAMPLE, requires_reference, run_cli, subprocess_env


def _stop_background(cache) -> None:
    pid_file = cache / "graphs" / "warmup.pid"
    if pid_file.exists():
        try:
            os.killpg(int(pid_file.read_text()), signal.SIGTERM)  # its own session: its workers too
        except (ProcessLookupError, ValueError):
            pass


@requires_reference
def test_first_run_uses_numpy_and_compiles_in_the_background(models, tmp_path):
    cache = tmp_path / "cache"
    env = subprocess_env(MAX_WHISPER_CACHE=str(cache), XDG_CACHE_HOME=str(tmp_path / "xdg"))
    try:
        start = time.perf_counter()
        done = run_cli("transcribe", str(SAMPLE), "--verbose", "False", env=env)  # the text alone
        seconds = time.perf_counter() - start
        assert done.returncode == 0, done.stderr
        assert "NumPy" in done.stderr and "compiling them in the background" in done.stderr
        expected = models.transcribe(
            "tiny.en", "reference", SAMPLE, beam_size=5, best_of=5
        )  # CLI defaults
        assert done.stdout.strip() == expected["text"].strip()
        pid = int((cache / "graphs" / "warmup.pid").read_text())
        os.kill(pid, 0)  # the background compile outlived the command
        print(f"first run answered in {seconds:.1f} s")
        # a second run while the compile is under way does not start another one
        again = run_cli("transcribe", str(SAMPLE), env=env)
        assert again.returncode == 0 and "already under way" in again.stderr
        assert int((cache / "graphs" / "warmup.pid").read_text()) == pid
    finally:
        _stop_background(cache)


def test_wait_for_compile_and_warm_cache_use_max(models):
    """With the graphs in the cache (the test session's warmup), the command runs on MAX, says
    nothing about compiling, and `warmup` has nothing left to do."""
    models.get("tiny.en", "max")  # waits for (or does) the compile into the default cache
    env = subprocess_env()
    done = run_cli("transcribe", str(SAMPLE), env=env)
    assert done.returncode == 0, done.stderr
    assert "NumPy" not in done.stderr and "compiling" not in done.stderr
    ready = run_cli("warmup", "--model", "tiny.en", env=env)
    assert (
        ready.returncode == 0
        and "compiled and cached" in ready.stderr
        and "compiling" not in ready.stderr
    )
    doctor = run_cli("doctor", env=env)
    assert "graph cache" in doctor.stdout and "compiled graphs" in doctor.stdout


def test_compile_estimate_is_when_the_last_graph_ends():
    from max_whisper.backends.max.warmup import _makespan

    assert _makespan([150, 160], workers=2) == 160  # side by side: the slower one
    assert _makespan([150, 160], workers=1) == 310  # one after the other
    assert _makespan([150, 160, 150], workers=2) == 300  # the third waits for the first worker


def test_compile_estimate_is_the_devices():
    from max.driver import accelerator_count

    from max_whisper.backends.max.decoder import DECODER_COMPILE_ESTIMATE_S
    from max_whisper.backends.max.device import DeviceUnavailable, device_label
    from max_whisper.backends.max.encoder import ENCODER_COMPILE_ESTIMATE_S
    from max_whisper.backends.max.warmup import jobs_for
    from max_whisper.dims import ModelDimensions

    dims = ModelDimensions(80, 1500, 384, 6, 4, 51864, 448, 384, 6, 4)
    encoder, decoder = jobs_for(dims, device="cpu")
    assert (encoder.estimate_s, decoder.estimate_s) == (
        ENCODER_COMPILE_ESTIMATE_S["cpu"],
        DECODER_COMPILE_ESTIMATE_S["cpu"],
    )
    assert device_label("auto") == ("gpu" if accelerator_count() else "cpu")
    if accelerator_count():
        assert jobs_for(dims, device="gpu")[1].estimate_s == DECODER_COMPILE_ESTIMATE_S["gpu"]
    else:
        with pytest.raises(DeviceUnavailable):
            _ = jobs_for(dims, device="gpu")[1].estimate_s
