"""Decoder ms per token and encoder ms per window: MAX against the PyTorch reference.

Prints one JSON object. The decoder number is the median step time of a 50-token greedy decode
(prefill of the start sequence, then one token per step, each the argmax of the last logits; EOT
does not stop it, so every run times the same number of steps) on a real clip's features, over
`--runs` decodes; `beam5` times the same with 5 rows per step (a beam search's batch).
Each (model, backend) pair runs in its own process, so that neither runtime's thread pool is
around while the other is timed.

    python bench/decoder_bench.py [--models tiny.en base] [--idle 0.7]

On a shared machine use --idle: another process on one of two cores slows MAX's two-thread
kernels several-fold (and PyTorch's less), which swamps the difference being measured.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
CLIP = ROOT.parent / "shared" / "audio" / "librivox-0870.wav"
IDLE = {"threshold": 0.0, "max_wait_s": 120.0, "timed_out": 0}


def _idle_fraction(interval: float = 0.3) -> float:
    """Share of all CPUs idle over `interval` (Linux /proc/stat); 1.0 where unknown."""
    def read() -> tuple[int, int]:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        return values[3] + values[4], sum(values)

    try:
        idle0, total0 = read()
        time.sleep(interval)
        idle1, total1 = read()
    except OSError:
        return 1.0
    return (idle1 - idle0) / max(1, total1 - total0)


def wait_for_idle() -> None:
    """With --idle, hold each timed run until the rest of the machine is (nearly) idle."""
    if IDLE["threshold"] <= 0:
        return
    deadline = time.monotonic() + IDLE["max_wait_s"]
    while _idle_fraction() < IDLE["threshold"]:
        if time.monotonic() > deadline:
            IDLE["timed_out"] += 1
            return


def _ms(seconds: list[float]) -> dict:
    return {"median": round(1000 * statistics.median(seconds), 2),
            "p25": round(1000 * float(np.percentile(seconds, 25)), 2),
            "min": round(1000 * min(seconds), 2), "n": len(seconds)}


def _mel(n_mels: int) -> np.ndarray:
    from max_whisper.audio import first_window_mel, load_audio

    audio = load_audio(CLIP) if CLIP.exists() else np.zeros(16000 * 5, np.float32)
    return first_window_mel(audio, n_mels)[None]


def time_encoder(backend, mel: np.ndarray, runs: int) -> dict:
    backend.encode(mel)  # warm-up
    times = []
    for _ in range(runs):
        wait_for_idle()
        start = time.perf_counter()
        backend.encode(mel)
        times.append(time.perf_counter() - start)
    return _ms(times)


def time_decoder(backend, features: np.ndarray, start_tokens: list[int], steps: int, runs: int,
                 group: int = 1) -> dict:
    """`runs` decodes of a prefill then `steps` single-token steps: per-step and prefill times."""
    def run() -> tuple[float, list[float]]:
        session = backend.decoder_session(features)
        tokens = np.tile(np.array(start_tokens, dtype=np.int64), (group, 1))
        t0 = time.perf_counter()
        logits = session.logits(tokens)
        prefill = time.perf_counter() - t0
        times = []
        for _ in range(steps):
            tokens = np.concatenate([tokens, logits[:, -1].argmax(-1)[:, None]], axis=1)
            t0 = time.perf_counter()
            logits = session.logits(tokens)
            times.append(time.perf_counter() - t0)
        return prefill, times

    run()  # warm-up
    prefills, times = [], []
    for _ in range(runs):
        wait_for_idle()
        prefill, step_times = run()
        prefills.append(prefill)
        times += step_times
    return {"per_token_ms": _ms(times), "prefill_ms": _ms(prefills), "group": group}


def bench_part(name: str, backend_name: str, args) -> dict:
    """Time one backend on one model (run in its own process by main)."""
    from max_whisper.api import _tokenizer_path
    from max_whisper.tokenizer import get_tokenizer
    from max_whisper.weights import load_model_weights

    weights = load_model_weights(name)
    dims = weights.dims
    mel = _mel(dims.n_mels)
    tokenizer = get_tokenizer(str(_tokenizer_path(weights)), dims.is_multilingual, dims.num_languages)
    sot = list(tokenizer.with_options(language="en", task="transcribe").sot_sequence)

    def decoder_times(backend, features) -> dict:
        result = {"greedy": time_decoder(backend, features, sot, args.steps, args.runs)}
        if args.beam > 1:
            result[f"beam{args.beam}"] = time_decoder(backend, features, sot, args.steps, args.runs, group=args.beam)
        return result

    start = time.perf_counter()
    if backend_name == "reference":
        import torch

        from max_whisper.backends.reference import ReferenceBackend

        backend = ReferenceBackend(weights, device="cpu")
        out = {"load_s": round(time.perf_counter() - start, 2), "torch_threads": torch.get_num_threads()}
        out["encoder_ms_per_window"] = time_encoder(backend, mel, args.encoder_runs)
        out["decoder"] = decoder_times(backend, backend.encode(mel))
        return out

    from max_whisper.backends.max.backend import MaxBackend

    backend = MaxBackend(weights, device="cpu")
    out = {"load_s": round(time.perf_counter() - start, 2),
           "compile_s": {"encoder": round(backend.encoder.compile_seconds, 1),
                         "decoder": round(backend.decoder.compile_seconds, 1)}}
    out["encoder_ms_per_window"] = time_encoder(backend, mel, args.encoder_runs)
    out["decoder"] = decoder_times(backend, backend.encode(mel))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["tiny.en", "base"])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--runs", type=int, default=3, help="decodes of --steps tokens per measurement")
    parser.add_argument("--beam", type=int, default=5, help="also time beam-sized batches (1: skip)")
    parser.add_argument("--encoder-runs", type=int, default=3)
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument("--idle", type=float, default=0.0, metavar="FRACTION",
                        help="before each timed run wait (up to 120 s) until this share of the CPUs is idle")
    parser.add_argument("--part", help=argparse.SUPPRESS)  # internal: MODEL:BACKEND in this process
    args = parser.parse_args()
    IDLE["threshold"] = args.idle

    if args.part:
        name, backend_name = args.part.split(":")
        try:
            out = bench_part(name, backend_name, args)
        except Exception as exc:  # a missing optional model or extra must not hide the others
            out = {"error": f"{type(exc).__name__}: {exc}"}
        out["idle_gate_timed_out"] = IDLE["timed_out"]
        print(json.dumps(out))
        return

    report = {"machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()},
              "clip": CLIP.name, "steps": args.steps, "runs": args.runs, "idle_gate": args.idle, "models": []}
    passthrough = _strip_option(sys.argv[1:], "--models")
    for name in args.models:
        entry = {"model": name}
        for backend_name in ["max"] + ([] if args.no_reference else ["reference"]):
            done = subprocess.run([sys.executable, __file__, *passthrough, "--part", f"{name}:{backend_name}"],
                                  capture_output=True, text=True)
            try:
                entry[backend_name] = json.loads(done.stdout.strip().splitlines()[-1])
            except (IndexError, json.JSONDecodeError):
                entry[backend_name] = {"error": (done.stderr or done.stdout)[-2000:]}
        report["models"].append(entry)
    print(json.dumps(report, indent=2))


def _strip_option(argv: list[str], option: str) -> list[str]:
    """argv without `option` and the values that follow it."""
    out, skipping = [], False
    for arg in argv:
        if arg == option:
            skipping = True
        elif skipping and not arg.startswith("--"):
            continue
        else:
            skipping = False
            out.append(arg)
    return out


if __name__ == "__main__":
    main()
