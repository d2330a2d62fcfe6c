"""`max-whisper bench --mode compile`: the MAX encoder's cold compile, warm start and ms per 30-s
window.

Cold: a fresh process with empty temporary caches (ours and MAX's own) builds the encoder.
Warm: a second fresh process on the same caches builds it again (loads the .mef files), then encodes
one window of real speech `runs` times after one untimed run. `float64_blocks` sets how many leading
blocks compute in float64 (None: the encoder's own choice; 0 measures the all-float32 encoder).
"""

from __future__ import annotations

import statistics
import tempfile
import time

from .clips import window_mel
from .settings import BenchError
from .worker import empty_caches, run_worker


def child(spec: dict) -> dict:
    """In a fresh process: build the encoder (timed), then time `runs` windows."""
    from ..backends.max.encoder import FLOAT64_BLOCKS, MaxEncoder
    from ..weights import load_model_weights

    weights = load_model_weights(spec["model"])
    float64_blocks = FLOAT64_BLOCKS if spec["float64_blocks"] is None else spec["float64_blocks"]
    start = time.perf_counter()
    encoder = MaxEncoder(weights.dims, weights.params, device="cpu", float64_blocks=float64_blocks)
    result = {
        "start_s": time.perf_counter() - start,
        "compile_s": encoder.compile_seconds,
        "float64_blocks": float64_blocks,
    }
    if spec["runs"]:
        mel = window_mel(weights.dims.n_mels, spec.get("clip"))
        encoder(mel)
        times = []
        for _ in range(spec["runs"]):
            start = time.perf_counter()
            encoder(mel)
            times.append(1000 * (time.perf_counter() - start))
        result["ms_per_window"] = times
    return result


def run_compile(
    model: str = "tiny.en",
    runs: int = 5,
    float64_blocks: int | None = None,
    clip: str | None = None,
) -> dict:
    from ..diagnostics import cpu_info

    if runs < 1:
        raise BenchError("--repeats must be at least 1")
    spec = {"task": "compile", "model": model, "float64_blocks": float64_blocks, "clip": clip}
    with tempfile.TemporaryDirectory(prefix="max-whisper-bench-") as tmp:
        cold = run_worker({**spec, "runs": 0}, env=empty_caches(tmp))
        warm = (
            run_worker({**spec, "runs": runs}, env=empty_caches(tmp))
            if "error" not in cold
            else cold
        )
    if "error" in warm:
        raise BenchError(f"the encoder did not build: {warm['error']}")
    cpu = cpu_info()
    return {
        "model": model,
        "device": "cpu",
        "float64_blocks": warm["float64_blocks"],
        "cpu": f"{cpu['model']}, {cpu['cores']} cores",
        "cold_compile_s": round(cold["compile_s"], 1),
        "cold_start_s": round(cold["start_s"], 1),
        "warm_start_s": round(warm["start_s"], 3),
        "warm_compile_s": warm["compile_s"],
        "encoder_ms_per_window_median": round(statistics.median(warm["ms_per_window"]), 1),
        "encoder_ms_per_window": [round(t, 1) for t in warm["ms_per_window"]],
    }
