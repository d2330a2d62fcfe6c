"""This machine's CPU as /proc/cpuinfo describes it, read once: for the compiled-graph cache key
and `doctor`."""

from __future__ import annotations

import functools

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


def cpu_flags() -> set[str]:
    """The CPU's feature flags (x86 "flags", Arm "Features")."""
    info = cpuinfo()
    return set((info.get("flags", "") + " " + info.get("Features", "")).split())
