"""Decoder ms per token and encoder ms per window: MAX against the PyTorch reference.

Prints one JSON object. The decoder number is the median step time of a 50-token greedy decode
(prefill of the start sequence, then one token per step, each the argmax of the last logits; EOT
does not stop it, so every run times the same number of steps) on a real clip's features.

    python bench/decoder_bench.py [--models tiny.en base] [--designs whole blocks] [--beam 5]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
CLIP = ROOT.parent / "shared" / "audio" / "librivox-0870.wav"


def _mel(n_mels: int) -> np.ndarray:
    from max_whisper.audio import load_audio, log_mel_spectrogram, pad_or_trim

    audio = load_audio(CLIP) if CLIP.exists() else np.zeros(16000 * 5, np.float32)
    return pad_or_trim(log_mel_spectrogram(audio, n_mels), 3000)[None]


IDLE = {"threshold": 0.0, "max_wait_s": 120.0, "timed_out": 0}


def _idle_fraction(interval: float = 0.4) -> float:
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
    """With --idle, hold each timed run until the rest of the machine is (nearly) idle: on a shared
    2-core box another process on one core slows MAX's two-thread kernels several-fold."""
    if IDLE["threshold"] <= 0:
        return
    deadline = time.monotonic() + IDLE["max_wait_s"]
    while _idle_fraction() < IDLE["threshold"]:
        if time.monotonic() > deadline:
            IDLE["timed_out"] += 1
            return


def _ms(seconds: list[float]) -> dict:
    return {"median": round(1000 * statistics.median(seconds), 2), "min": round(1000 * min(seconds), 2),
            "n": len(seconds)}


def time_encoder(backend, mel: np.ndarray, runs: int) -> dict:
    backend.encode(mel)  # warm-up
    times = []
    for _ in range(runs):
        wait_for_idle()
        start = time.perf_counter()
        backend.encode(mel)
        times.append(time.perf_counter() - start)
    return _ms(times)


def time_decoder(backend, features: np.ndarray, start_tokens: list[int], steps: int, group: int = 1) -> dict:
    """Prefill, then `steps` single-token steps; returns the per-step times (and the prefill's)."""
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
    wait_for_idle()
    prefill, times = run()
    return {"per_token_ms": _ms(times), "prefill_ms": round(1000 * prefill, 2), "group": group}


def bench_model(name: str, designs: list[str], steps: int, beam: int, encoder_runs: int, reference: bool) -> dict:
    from max_whisper.backends.max.backend import MaxBackend
    from max_whisper.backends.max.decoder import MaxDecoder
    from max_whisper.api import _tokenizer_path
    from max_whisper.tokenizer import get_tokenizer
    from max_whisper.weights import load_model_weights

    weights = load_model_weights(name)
    dims = weights.dims
    mel = _mel(dims.n_mels)
    tokenizer = get_tokenizer(str(_tokenizer_path(weights)), dims.is_multilingual, dims.num_languages)
    sot = list(tokenizer.with_options(language="en", task="transcribe").sot_sequence)
    out: dict = {"model": name}

    start = time.perf_counter()
    backend = MaxBackend(weights, device="cpu")
    out["max_load_s"] = round(time.perf_counter() - start, 2)
    out["max_compile_s"] = {"encoder": round(getattr(backend.encoder, "compile_seconds", 0.0), 1),
                            **{f"decoder_{k}": round(v, 1) for k, v in backend.decoder.compile_seconds.items()}}
    features = backend.encode(mel)
    out["max_encoder_ms_per_window"] = time_encoder(backend, mel, encoder_runs)
    out["max_decoder"] = {}
    for design in designs:
        if design != backend.decoder.design:
            backend.decoder = MaxDecoder(dims, weights.params, backend.decoder.device, backend.decoder.device_ref,
                                         design=design)
            out["max_compile_s"] |= {f"decoder_{k}": round(v, 1) for k, v in backend.decoder.compile_seconds.items()}
        result = {"greedy": time_decoder(backend, features, sot, steps)}
        if beam > 1:
            result[f"beam{beam}"] = time_decoder(backend, features, sot, steps, group=beam)
        out["max_decoder"][design] = result

    if reference:
        try:
            from max_whisper.backends.reference import ReferenceBackend
        except ImportError as exc:  # pragma: no cover
            out["reference"] = f"unavailable: {exc}"
            return out
        import torch

        ref = ReferenceBackend(weights, device="cpu")
        out["reference_torch_threads"] = torch.get_num_threads()
        out["reference_encoder_ms_per_window"] = time_encoder(ref, mel, encoder_runs)
        ref_features = ref.encode(mel)
        result = {"greedy": time_decoder(ref, ref_features, sot, steps)}
        if beam > 1:
            result[f"beam{beam}"] = time_decoder(ref, ref_features, sot, steps, group=beam)
        out["reference_decoder"] = result
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["tiny.en", "base"])
    parser.add_argument("--designs", nargs="+", default=["whole"], choices=["whole", "blocks"])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--beam", type=int, default=5, help="also time beam-sized batches (1: skip)")
    parser.add_argument("--encoder-runs", type=int, default=3)
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument("--idle", type=float, default=0.0, metavar="FRACTION",
                        help="before each timed run wait (up to 120 s) until this share of the CPUs is idle")
    args = parser.parse_args()
    IDLE["threshold"] = args.idle

    report = {"machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()},
              "clip": CLIP.name, "steps": args.steps, "models": []}
    for name in args.models:
        try:
            report["models"].append(bench_model(name, args.designs, args.steps, args.beam, args.encoder_runs,
                                                not args.no_reference))
        except Exception as exc:  # a missing optional model must not hide the others
            report["models"].append({"model": name, "error": f"{type(exc).__name__}: {exc}"})
    report["idle_gate"] = dict(IDLE)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
