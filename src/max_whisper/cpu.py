"""This machine's CPU as /proc/cpuinfo describes it, read once: for the compiled-graph cache key
and `doctor`; and the older x86-64 level that $MAX_WHISPER_CPU_TARGET may ask the compiled kernels
to keep to (an AVX-512 machine running the AVX2 code that another machine would run, or graphs
compiled for a fleet of older CPUs)."""

from __future__ import annotations

import functools
import os

from .errors import UsageError

CPU_TARGET_ENV = "MAX_WHISPER_CPU_TARGET"
# each x86-64 level's vector features among those that choose code paths here and in MAX's kernels
_AVX2 = {"avx", "avx2", "fma", "f16c"}
X86_LEVELS = {
    "x86-64": set(),
    "x86-64-v2": set(),
    "x86-64-v3": _AVX2,
    "x86-64-v4": _AVX2 | {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"},
}
_VECTOR_PREFIXES = ("avx", "fma", "f16c", "amx")

IDENTIFYING_KEYS = ("model name", "flags", "Features", "CPU implementer", "CPU part")


@functools.cache
def cpuinfo() -> dict[str, str]:
    """The first value of each identifying key ({} where there is no /proc/cpuinfo); the flags
    sorted, so that their order never changes an identity."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return {}
    seen: dict[str, str] = {}
    for line in lines:
        name, _, value = line.partition(":")
        name = name.strip()
        if name in IDENTIFYING_KEYS and name not in seen:
            seen[name] = (
                " ".join(sorted(value.split())) if name in ("flags", "Features") else value.strip()
            )
    return seen


def host_flags() -> set[str]:
    """The CPU's feature flags (x86 "flags", Arm "Features")."""
    info = cpuinfo()
    return set((info.get("flags", "") + " " + info.get("Features", "")).split())


def cpu_target() -> str | None:
    """The x86-64 level named by $MAX_WHISPER_CPU_TARGET (None: this CPU's own instructions); a
    level this CPU cannot run, or another name, is a UsageError."""
    target = os.environ.get(CPU_TARGET_ENV, "").strip()
    if not target:
        return None
    if target not in X86_LEVELS:
        raise UsageError(
            f"{CPU_TARGET_ENV}={target!r}: choose one of {', '.join(X86_LEVELS)}, or leave it unset"
        )
    host = host_flags()
    if "sse2" not in host or not X86_LEVELS[target] <= host:
        raise UsageError(f"{CPU_TARGET_ENV}={target!r}: this CPU cannot run that level's code")
    return target


def cpu_flags() -> set[str]:
    """The feature flags that code may use: the CPU's, less the vector features that the
    $MAX_WHISPER_CPU_TARGET level lacks."""
    flags, target = host_flags(), cpu_target()
    if target is None:
        return flags
    allowed = X86_LEVELS[target]
    return {f for f in flags if not f.startswith(_VECTOR_PREFIXES) or f in allowed}
