"""`max-whisper compare` (MAX vs reference encoder, layer by layer) and `max-whisper doctor`."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import platform
import sys
from pathlib import Path

import numpy as np

from .allocator import allocator_in_use, jemalloc_path
from .cpu import CPU_TARGET_ENV, cpu_flags, cpu_target, cpuinfo, host_flags
from .errors import UsageError
from .weights.registry import NAMED_MODELS

# The final encoder features against PyTorch's: bounded loosely, because any two float32
# evaluations of Whisper's encoder land up to ~1e-3 apart depending on the CPU's kernels while
# their tokens agree (README: Correctness). `compare` and the tests hold MAX to these.
FEATURES_ATOL = 5e-3
FEATURES_MIN_COSINE = 1 - 1e-6


def add_parsers(sub) -> None:
    from .cli import add_command, add_device_options, add_model_options

    p = add_command(
        sub,
        "compare",
        cmd_compare,
        help="run the reference and MAX encoders side by side, layer by layer",
    )
    p.add_argument("audio", help="an audio file (its first 30 s are compared)")
    add_model_options(p, backend_default=None)
    add_command(
        sub,
        "doctor",
        cmd_doctor,
        help="report MAX, devices, CPU, cache, models and optional packages",
    )
    p = add_command(
        sub,
        "warmup",
        cmd_warmup,
        help="compile and cache every MAX graph the models need (for images and CI)",
        description="Compile the MAX graphs of the given models for this machine, in parallel "
        "processes, and keep them in the graph cache (see `doctor`).",
    )
    p.add_argument(
        "--model", nargs="+", default=["tiny.en"], help="model names or paths (default: tiny.en)"
    )
    add_device_options(p)
    p.add_argument(
        "--jobs", type=int, default=None, help="compiles at once (default: one per core)"
    )


def cmd_warmup(args) -> int:
    from .backends.max.warmup import compile_all, jobs_for
    from .weights import load_model_weights

    jobs = [
        job
        for name in args.model
        for job in jobs_for(load_model_weights(name).dims, args.encoder_float64_blocks, args.device)
    ]
    compile_all(list(dict.fromkeys(jobs)), workers=args.jobs)  # models with equal dims share graphs
    print(
        f"max-whisper: MAX graphs for {', '.join(args.model)} are compiled and cached",
        file=sys.stderr,
    )
    return 0


# -- compare --------------------------------------------------------------------------------------
def tensor_stats(x: np.ndarray) -> dict[str, float]:
    return {
        "mean": float(x.mean()),
        "std": float(x.std()),
        "min": float(x.min()),
        "max": float(x.max()),
    }


def difference(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    a64, b64 = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    cosine = float(a64 @ b64 / (np.linalg.norm(a64) * np.linalg.norm(b64) + 1e-30))
    return {"max_abs": float(np.max(np.abs(a64 - b64))), "cosine": cosine}


def reference_intermediates(torch_model, mel: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """The PyTorch encoder's stem output, each block's output and ln_post, in the MAX encoder's
    names."""
    import torch

    encoder = torch_model.encoder
    captured: list[tuple[str, np.ndarray]] = []
    hooks = [
        encoder.blocks[0].register_forward_pre_hook(
            lambda _m, args: captured.append(("stem", args[0].detach().numpy().copy()))
        )
    ]
    for i, block in enumerate(encoder.blocks):
        hooks.append(
            block.register_forward_hook(
                lambda _m, _i, out, i=i: captured.append(
                    (f"block.{i}", out.detach().numpy().copy())
                )
            )
        )
    try:
        with torch.no_grad():
            features = encoder(torch.from_numpy(mel))
    finally:
        for hook in hooks:
            hook.remove()
    return captured + [("ln_post", features.numpy())]


def compare_encoders(
    model_name: str, audio_path: str, device: str = "auto", float64_blocks: int = 0
) -> list[dict]:
    from .audio import first_window_mel, load_audio
    from .backends.max.encoder import MaxEncoder
    from .backends.reference import build_torch_model
    from .weights import load_model_weights

    weights = load_model_weights(model_name)
    mel = first_window_mel(load_audio(audio_path), weights.dims.n_mels)[None]
    encoder = MaxEncoder(weights.dims, weights.params, device=device, float64_blocks=float64_blocks)
    ours = dict(encoder.run_with_intermediates(mel))
    rows = []
    for name, ref in reference_intermediates(build_torch_model(weights, "cpu"), mel):
        rows.append(
            {
                "tensor": name,
                "dtype": encoder.stage_dtypes[name],
                **{f"ref_{k}": v for k, v in tensor_stats(ref).items()},
                **{f"max_{k}": v for k, v in tensor_stats(ours[name]).items()},
                **difference(ours[name], ref),
            }
        )
    return rows


def cmd_compare(args) -> int:
    rows = compare_encoders(args.model, args.audio, args.device, args.encoder_float64_blocks)
    header = (
        f"{'tensor':<9} {'dtype':<7} {'ref mean':>9} {'ref std':>8} {'ref min':>8} {'ref max':>8} "
        f"{'max mean':>9} {'max std':>8} {'max min':>8} {'max max':>8} "
        f"{'max|diff|':>10} {'cosine':>10}"
    )
    print(header)
    for r in rows:
        print(
            f"{r['tensor']:<9} {r['dtype']:<7} {r['ref_mean']:>9.4f} {r['ref_std']:>8.4f} "
            f"{r['ref_min']:>8.3f} {r['ref_max']:>8.3f} "
            f"{r['max_mean']:>9.4f} {r['max_std']:>8.4f} {r['max_min']:>8.3f} {r['max_max']:>8.3f} "
            f"{r['max_abs']:>10.2e} {r['cosine']:>10.7f}"
        )
    worst, cosine = rows[-1]["max_abs"], rows[-1]["cosine"]
    ok = worst <= FEATURES_ATOL and cosine >= FEATURES_MIN_COSINE
    print(
        f"{'OK' if ok else 'MISMATCH'}: final features max |diff| {worst:.2e}, cosine {cosine:.7f} "
        f"(tolerance {FEATURES_ATOL:g}, cosine >= 1 - {1 - FEATURES_MIN_COSINE:.0e})"
    )
    return 0 if ok else 1


# -- doctor ---------------------------------------------------------------------------------------
def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_info() -> dict[str, object]:
    model = platform.processor() or platform.machine()
    try:
        target, flags = cpu_target(), cpu_flags()
    except UsageError as exc:  # the doctor reports a wrong $MAX_WHISPER_CPU_TARGET, never fails
        target, flags = f"invalid: {exc}", host_flags()
    if model in ("", platform.machine()):
        model = cpuinfo().get("model name", model)
    interesting = [
        "avx",
        "avx2",
        "fma",
        "f16c",
        "avx512f",
        "avx512_bf16",
        "avx_vnni",
        "amx_tile",
        "neon",
        "asimd",
    ]
    import os

    info: dict[str, object] = {
        "model": model,
        "cores": os.cpu_count(),
        "features": [f for f in interesting if f in flags],
    }
    if target:
        info["target"] = target
    return info


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def doctor_report() -> dict[str, object]:
    report: dict[str, object] = {"python": sys.version.split()[0], "platform": platform.platform()}
    report["max"] = _version("max")
    try:
        from max.driver import accelerator_count

        report["accelerators"] = accelerator_count()
    except Exception as exc:  # MAX missing or broken: say so, don't crash the doctor
        report["accelerators"] = f"unavailable ({exc})"
    report["cpu"] = cpu_info()
    report["allocator"] = allocator_in_use()
    try:
        from .backends.max.compile_cache import cache_dir

        cache = cache_dir()
        report["graph_cache"] = {
            "path": str(cache),
            "files": len(list(cache.glob("*.mef"))) if cache.is_dir() else 0,
            "mb": round(_dir_size(cache) / 1e6, 1),
        }
    except Exception as exc:
        report["graph_cache"] = f"unavailable ({exc})"
    models = {}
    for name, named in NAMED_MODELS.items():
        try:
            models[name] = ", ".join(str(p) for p in named.locate())
        except Exception as exc:
            models[name] = f"not installed ({exc})"
    report["models"] = models
    # find_spec, not import: the doctor must not pull torch into the process
    report["optional"] = {
        name: (_version(dist) if importlib.util.find_spec(mod) else None)
        for name, mod, dist in [
            ("torch", "torch", "torch"),
            ("openai-whisper", "whisper", "openai-whisper"),
            ("faster-whisper", "faster_whisper", "faster-whisper"),
            ("fastapi", "fastapi", "fastapi"),
        ]
    }
    return report


def cmd_doctor(args) -> int:
    report = doctor_report()
    print(f"python          {report['python']} on {report['platform']}")
    print(f"MAX             {report['max'] or 'NOT INSTALLED'}")
    print(f"accelerators    {report['accelerators']}")
    cpu = report["cpu"]
    print(
        f"CPU             {cpu['model']}, {cpu['cores']} cores, "
        f"features: {' '.join(cpu['features']) or 'none'}"
    )
    if "target" in cpu:
        print(f"CPU target      {cpu['target']} (${CPU_TARGET_ENV})")
    hint = ""
    if report["allocator"] != "jemalloc" and (library := jemalloc_path()):
        hint = f" (LD_PRELOAD={library} for MAX's jemalloc)"
    print(f"allocator       {report['allocator']}{hint}")
    cache = report["graph_cache"]
    if isinstance(cache, dict):
        print(
            f"graph cache     {cache['path']} ({cache['files']} compiled graphs, {cache['mb']} MB)"
        )
    else:
        print(f"graph cache     {cache}")
    for name, where in report["models"].items():
        print(f"{'model ' + name:<16}{where}")
    for name, version in report["optional"].items():
        print(f"{name:<16}{version or 'not installed'}")
    return 0 if report["max"] else 1
