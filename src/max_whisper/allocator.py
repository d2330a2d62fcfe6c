"""The command's memory allocator. MAX ships jemalloc for its own `max` command, which runs on it
instead of glibc's malloc; `max-whisper` does the same. A decoder step's outputs (each layer's grown
KV cache, the logits) are new buffers at every step, and they come back faster from jemalloc (see
the README). MODULAR_MAX_ALLOCATOR=system keeps the system's allocator."""

from __future__ import annotations

JEMALLOC_LIBRARY = "libjemalloc_preload.so"


def use_max_allocator() -> None:
    """Start this process again with MAX's jemalloc preloaded, unless it already runs on it, the
    user chose the system's allocator, or this MAX ships none (then nothing happens). The process
    restarts from the top: call it first, before any work."""
    try:
        from max._entrypoints.allocator import reexec_with_jemalloc
    except ImportError:  # no MAX, or one without it: the system's allocator
        return
    reexec_with_jemalloc()


def jemalloc_path() -> str | None:
    """The jemalloc library MAX ships, for LD_PRELOAD (None where it ships none)."""
    try:
        from max._entrypoints.allocator import _find_library
    except ImportError:
        return None
    library = _find_library()
    return None if library is None else str(library)


def allocator_in_use() -> str:
    """'jemalloc' when MAX's jemalloc is loaded into this process, else 'system'."""
    try:
        with open("/proc/self/maps") as maps:
            return "jemalloc" if any(JEMALLOC_LIBRARY in line for line in maps) else "system"
    except OSError:
        return "system"
