"""`max-whisper bench --mode stages`: encoder ms per window and decoder ms per token, MAX against
the PyTorch reference, each (model, backend) in its own process.

The decoder number is the median step time of a `steps`-token greedy decode (prefill of the start
sequence, then one token per step, each the argmax of the last logits; EOT does not stop it, so
every run times the same number of steps) on a real clip's features, over `runs` decodes;
`beam<N>` times the same with N rows per step (a beam search's batch). Each (model, backend) runs
in a fresh process so that neither runtime's thread pool is around while the other is timed.

On a shared machine use `idle`: another process on one of two cores slows MAX's two-thread kernels
several-fold (and PyTorch's less), which swamps the difference being measured.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from .clips import default_clip, window_mel
from .plan import reference_installed
from .settings import BenchError
from .worker import run_worker

STAGE_BACKENDS = ("max", "reference")
IDLE_MAX_WAIT_S = 120.0


class IdleGate:
    """Hold each timed run until this share of the CPUs is idle (0: don't wait), up to
    `max_wait_s`."""

    def __init__(self, threshold: float = 0.0, max_wait_s: float = IDLE_MAX_WAIT_S):
        self.threshold, self.max_wait_s, self.timed_out = threshold, max_wait_s, 0

    def wait(self) -> None:
        if self.threshold <= 0:
            return
        deadline = time.monotonic() + self.max_wait_s
        while idle_fraction() < self.threshold:
            if time.monotonic() > deadline:
                self.timed_out += 1
                return


def idle_fraction(interval: float = 0.3) -> float:
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


def _ms(seconds: list[float]) -> dict:
    return {
        "median": round(1000 * statistics.median(seconds), 2),
        "p25": round(1000 * float(np.percentile(seconds, 25)), 2),
        "min": round(1000 * min(seconds), 2),
        "n": len(seconds),
    }


def _timed_runs(once: Callable[[], object], runs: int, gate: IdleGate) -> list:
    """One untimed warm-up call, then `runs` calls, each after the idle gate; their results."""
    once()
    results = []
    for _ in range(runs):
        gate.wait()
        results.append(once())
    return results


def time_call(call: Callable[[], object], runs: int, gate: IdleGate) -> dict:
    def once() -> float:
        start = time.perf_counter()
        call()
        return time.perf_counter() - start

    return _ms(_timed_runs(once, runs, gate))


def cross_kv_call(backend, features: np.ndarray) -> Callable[[], object]:
    """A call computing every decoder layer's cross-attention K and V of `features` alone, as the
    backend does: MAX's decoder graph for it (its encoder graph gives them with the features),
    openai-whisper's projections (which its decoder runs on a window's first step)."""
    if backend.name == "reference":
        torch, blocks = backend.torch, backend.model.decoder.blocks
        tensor = backend._features(features)

        def projections() -> list:
            with torch.no_grad():
                return [(b.cross_attn.key(tensor), b.cross_attn.value(tensor)) for b in blocks]

        return projections
    return lambda: backend.decoder.cross_kv(features, reuse=False)


def time_decoder(
    backend,
    features: np.ndarray,
    start_tokens: list[int],
    steps: int,
    runs: int,
    gate: IdleGate,
    group: int = 1,
) -> dict:
    """`runs` decodes of a prefill then `steps` single-token steps: per-step and prefill times."""

    def once() -> tuple[float, list[float]]:
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

    done = _timed_runs(once, runs, gate)
    return {
        "per_token_ms": _ms([t for _, step_times in done for t in step_times]),
        "prefill_ms": _ms([prefill for prefill, _ in done]),
        "group": group,
    }


def stage_backends(requested: list[str] | None) -> list[str]:
    """The requested backends (max and/or reference); by default both, the reference only where
    installed."""
    if requested is None:
        return [b for b in STAGE_BACKENDS if b != "reference" or reference_installed()]
    unknown = [b for b in requested if b not in STAGE_BACKENDS]
    if unknown or not requested:
        raise BenchError(
            f"--mode stages times {' and '.join(STAGE_BACKENDS)}, "
            f"not {', '.join(unknown) or 'none'}"
        )
    return requested


def child(spec: dict) -> dict:
    """One backend on one model, in a fresh process: load, then time the encoder and the decoder."""
    from ..api import _tokenizer_path
    from ..tokenizer import get_tokenizer
    from ..weights import load_model_weights

    gate = IdleGate(spec["idle"])
    weights = load_model_weights(spec["model"])
    dims = weights.dims
    mel = window_mel(dims.n_mels, spec["clip"])
    tokenizer = get_tokenizer(
        str(_tokenizer_path(weights)), dims.is_multilingual, dims.num_languages
    )
    sot = list(tokenizer.with_options(language="en", task="transcribe").sot_sequence)
    steps, runs, beam = spec["steps"], spec["runs"], spec["beam"]

    start = time.perf_counter()
    if spec["backend"] == "reference":
        import torch

        from ..backends.reference import ReferenceBackend

        backend = ReferenceBackend(weights, device="cpu")
        out = {
            "load_s": round(time.perf_counter() - start, 2),
            "torch_threads": torch.get_num_threads(),
        }
    else:
        from ..backends.max.backend import MaxBackend

        backend = MaxBackend(weights, device="cpu")
        out = {
            "load_s": round(time.perf_counter() - start, 2),
            "compile_s": {
                "encoder": round(backend.encoder.compile_seconds, 1),
                "decoder": round(backend.decoder.compile_seconds, 1),
            },
        }
    encoder = time_call(lambda: backend.encode(mel), spec["encoder_runs"], gate)
    out["encoder_ms_per_window"] = encoder
    features = backend.encode(mel)
    out["cross_kv_ms_per_window"] = cross_kv = time_call(
        cross_kv_call(backend, features), spec["encoder_runs"], gate
    )
    # the same work on either side: MAX's encoder graph computes the cross K/V too
    out["encoder_and_cross_kv_ms"] = round(
        encoder["median"] + (cross_kv["median"] if backend.name == "reference" else 0.0), 2
    )
    out["decoder"] = {"greedy": time_decoder(backend, features, sot, steps, runs, gate)}
    if beam > 1:
        out["decoder"][f"beam{beam}"] = time_decoder(
            backend, features, sot, steps, runs, gate, group=beam
        )
    out["idle_gate_timed_out"] = gate.timed_out
    return out


def run_stages(
    models: list[str],
    backends: Sequence[str] = STAGE_BACKENDS,
    clip: str | None = None,
    steps: int = 50,
    runs: int = 3,
    beam: int = 5,
    encoder_runs: int = 3,
    idle: float = 0.0,
    log: Callable[[str], None] | None = None,
) -> dict:
    """The report: {"machine", "clip", "steps", "runs", "idle_gate",
    "models": [{"model", <backend>: {...}}]}."""
    from ..diagnostics import cpu_info

    clip_path = Path(clip) if clip is not None else default_clip()
    report = {
        "machine": {"cpu": cpu_info()["model"], "python": platform.python_version()},
        "clip": clip_path.name,
        "steps": steps,
        "runs": runs,
        "idle_gate": idle,
        "models": [],
    }
    for name in models:
        entry = {"model": name}
        for backend in backends:
            if log:
                log(f"stages: {backend} × {name} in a fresh process")
            entry[backend] = run_worker(
                {
                    "task": "stages",
                    "model": name,
                    "backend": backend,
                    "clip": str(clip_path),
                    "steps": steps,
                    "runs": runs,
                    "beam": beam,
                    "encoder_runs": encoder_runs,
                    "idle": idle,
                }
            )
        report["models"].append(entry)
    return report
