"""MAX encoder: cold compile, warm start and milliseconds per 30-s window. Prints one JSON object.

Cold: a fresh process with empty temporary caches (ours and MAX's own) builds the encoder.
Warm: a second fresh process on the same caches builds it again (loads the .mef files), then
encodes one window of real speech `--runs` times after one untimed run.

    python bench/encoder_bench.py [--model tiny.en] [--runs 5] [--float64-blocks N]

--float64-blocks sets how many leading blocks compute in float64 (default: the encoder's own choice;
0 measures the all-float32 encoder).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CLIP = ROOT.parent / "shared" / "audio" / "librivox-0870.wav"


def _mel(n_mels: int) -> np.ndarray:
    from max_whisper.audio import first_window_mel, load_audio

    audio = load_audio(CLIP) if CLIP.exists() else np.zeros(16000 * 5, np.float32)
    return first_window_mel(audio, n_mels)[None]


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def child(model: str, runs: int, float64_blocks: int | None) -> dict:
    """Runs in a fresh process: build the encoder, then time `runs` windows."""
    from max_whisper.backends.max.encoder import FLOAT64_BLOCKS, MaxEncoder
    from max_whisper.weights import load_model_weights

    weights = load_model_weights(model)
    start = time.perf_counter()
    float64_blocks = FLOAT64_BLOCKS if float64_blocks is None else float64_blocks
    encoder = MaxEncoder(weights.dims, weights.params, device="cpu", float64_blocks=float64_blocks)
    result = {"start_s": time.perf_counter() - start, "compile_s": encoder.compile_seconds,
              "float64_blocks": float64_blocks}
    if runs:
        mel = _mel(weights.dims.n_mels)
        encoder(mel)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            encoder(mel)
            times.append(1000 * (time.perf_counter() - start))
        result["ms_per_window"] = times
    return result


def run_child(model: str, runs: int, float64_blocks: int | None, env: dict) -> dict:
    extra = [] if float64_blocks is None else ["--float64-blocks", str(float64_blocks)]
    done = subprocess.run(
        [sys.executable, __file__, "--child", "--model", model, "--runs", str(runs), *extra],
        env=env, capture_output=True, text=True, check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--float64-blocks", type=int, default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.model, args.runs, args.float64_blocks)))
        return

    with tempfile.TemporaryDirectory(prefix="max-whisper-bench-") as tmp:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
            "MAX_WHISPER_CACHE": str(Path(tmp) / "max-whisper"),
            "MODULAR_DERIVED_PATH": str(Path(tmp) / "modular"),  # MAX's own compile cache, empty too
        }
        cold = run_child(args.model, 0, args.float64_blocks, env)
        warm = run_child(args.model, args.runs, args.float64_blocks, env)
    print(json.dumps({
        "model": args.model,
        "device": "cpu",
        "float64_blocks": warm["float64_blocks"],
        "cpu": f"{_cpu_name()}, {os.cpu_count()} cores",
        "cold_compile_s": round(cold["compile_s"], 1),
        "cold_start_s": round(cold["start_s"], 1),
        "warm_start_s": round(warm["start_s"], 3),
        "warm_compile_s": warm["compile_s"],
        "encoder_ms_per_window_median": round(statistics.median(warm["ms_per_window"]), 1),
        "encoder_ms_per_window": [round(t, 1) for t in warm["ms_per_window"]],
    }, indent=2))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    main()
