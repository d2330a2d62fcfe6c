"""What can run here: the GPUs each runtime sees, the rows for the requested backends, the
installed models."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .settings import FASTER_WHISPER_TYPES, OUR_BACKENDS, BenchError, Row


@dataclass
class GpuInfo:
    max_accelerators: int = 0
    torch_cuda: bool = False
    ct2_cuda: int = 0


def detect_gpus(need_torch: bool = True) -> GpuInfo:
    info = GpuInfo()
    try:
        from max.driver import accelerator_count

        info.max_accelerators = int(accelerator_count())
    except Exception:
        pass
    if need_torch and _has_module("torch"):
        try:
            import torch

            info.torch_cuda = bool(torch.cuda.is_available())
        except Exception:
            pass
    if _has_module("ctranslate2"):
        try:
            import ctranslate2

            info.ct2_cuda = int(ctranslate2.get_cuda_device_count())
        except Exception:
            pass
    return info


def needs_torch(backends: Iterable[str]) -> bool:
    """Whether any of these backends runs PyTorch (so CUDA visibility through torch matters)."""
    return any(b.startswith(("reference", "hybrid")) for b in backends)


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def reference_installed() -> bool:
    """Whether the reference extra (torch, openai-whisper) is installed."""
    return _has_module("torch") and _has_module("whisper")


def _our_backend_unavailable(backend: str) -> str | None:
    """Why our `backend` can't run here, or None."""
    reference_missing = None
    if not reference_installed():
        reference_missing = "needs the reference extra (torch, openai-whisper)"
    if backend == "reference":
        return reference_missing
    if not _has_module("max"):
        return "needs MAX (pip install max)"
    if backend == "hybrid":
        return reference_missing
    if backend == "max":
        try:
            from ..backends.max import MaxBackend  # noqa: F401
        except Exception as exc:
            return f"the MAX backend does not import yet ({type(exc).__name__}: {exc})"
    return None


def plan_rows(
    requested: Iterable[str], device: str = "auto", gpus: GpuInfo | None = None
) -> tuple[list[Row], list[dict]]:
    """Rows to run for the requested backends on `device` (auto: CPU rows plus GPU rows where a GPU
    exists; cpu; gpu), and [{"backend", "reason"}] for those that can't run here."""
    if device not in ("auto", "cpu", "gpu"):
        raise BenchError(f"unknown device '{device}' (auto, cpu or gpu)")
    wanted = [r.strip() for r in requested if r.strip()]
    gpus = gpus or detect_gpus(need_torch=needs_torch(wanted))
    rows: list[Row] = []
    skipped: list[dict] = []

    def add(row: Row, reason: str | None) -> None:
        if reason:
            skipped.append({"backend": row.name, "reason": reason})
        elif row not in rows:
            rows.append(row)

    for name in wanted:
        if name.startswith("faster-whisper"):
            rest = name[len("faster-whisper") :].lstrip("-")
            gpu_only = rest.endswith("cuda")
            rest = rest.removesuffix("cuda").rstrip("-")
            batched_only = rest.endswith("batched")
            rest = rest.removesuffix("batched").rstrip("-")
            types = (
                [(rest, batched_only)]
                if rest
                else [(t, False) for t in FASTER_WHISPER_TYPES] + [("int8", True)]
            )
            if any(t not in FASTER_WHISPER_TYPES for t, _ in types):
                raise BenchError(f"unknown faster-whisper compute type in '{name}' (int8 or fp32)")
            missing = None if _has_module("faster_whisper") else "faster-whisper is not installed"
            for t, batched in types:
                kind = f"{t}-batched" if batched else t
                if device in ("auto", "cpu") and not gpu_only:
                    add(Row(f"faster-whisper-{kind}", "faster-whisper", t, "cpu", batched), missing)
                if device in ("auto", "gpu") or gpu_only:
                    row = Row(f"faster-whisper-{kind}-cuda", "faster-whisper", t, "gpu", batched)
                    if gpus.ct2_cuda:
                        add(row, missing)
                    elif device == "gpu" or gpu_only:
                        add(row, missing or "CTranslate2 sees no CUDA device")
            continue
        base, _, suffix = name.partition("-")
        if (
            base not in OUR_BACKENDS
            or suffix not in ("", "gpu", "cuda", "batched")
            or (suffix == "batched" and base != "max")
        ):
            raise BenchError(
                f"unknown backend '{name}' (choose from max, max-batched, hybrid, reference, "
                "faster-whisper, faster-whisper-int8, faster-whisper-fp32; add -gpu / -cuda for a "
                "GPU row)"
            )
        missing = _our_backend_unavailable(base)
        gpu_name = f"{base}-cuda" if base == "reference" else f"{base}-gpu"
        if device in ("auto", "cpu") and suffix in ("", "batched"):
            if suffix == "":
                add(Row(base, "max-whisper", base, "cpu"), missing)
            if base == "max":  # + the batching engine over the workload's files together
                add(Row("max-batched", "max-whisper", base, "cpu", batched=True), missing)
            if suffix == "batched":
                continue
        if device in ("auto", "gpu") or suffix:
            has_gpu = {
                "reference": gpus.torch_cuda,
                "max": gpus.max_accelerators > 0,
                "hybrid": gpus.torch_cuda and gpus.max_accelerators > 0,
            }[base]
            if has_gpu:
                add(Row(gpu_name, "max-whisper", base, "gpu"), missing)
            elif device == "gpu" or suffix:
                add(
                    Row(gpu_name, "max-whisper", base, "gpu"),
                    missing or "no GPU for this backend here",
                )
    return rows, skipped


def installed_models(names: Iterable[str]) -> tuple[list[str], list[dict]]:
    from ..weights.registry import NAMED_MODELS

    ok, skipped = [], []
    for name in names:
        named = NAMED_MODELS.get(name)
        if named is None and not Path(name).expanduser().exists():
            raise BenchError(f"unknown model '{name}' ({', '.join(NAMED_MODELS)} or a path)")
        try:
            if named is not None:
                named.locate()
            ok.append(name)
        except Exception as exc:
            skipped.append({"model": name, "reason": str(exc)})
    return ok, skipped
