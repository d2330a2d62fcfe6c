"""Timing one runner over a set of clips: a warm-up pass, then timed passes; and the process's
peak RSS."""

from __future__ import annotations

import resource
import statistics
import sys

from .clips import Clip
from .runners import Pass
from .settings import BenchError, _r


def peak_rss_mb() -> float:
    """High-water resident set size of this process, in MB (Linux reports KiB, macOS bytes)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1 << 20) if sys.platform == "darwin" else rss / 1024


def timed_pass(runner, clips: list[Clip]) -> list[Pass]:
    """One pass over all clips (together, where the runner batches them)."""
    if getattr(runner, "batched", False) and hasattr(runner, "transcribe_set"):
        return runner.transcribe_set([clip.samples for clip in clips])
    return [runner.transcribe(clip.samples) for clip in clips]


def cross_kv_ms(runner, clips: list[Clip]) -> float | None:
    """The runner's cross-attention K/V alone for one window of the first clip, where it has one
    to time (our max and reference backends)."""
    probe = getattr(runner, "cross_kv_ms", None)
    return _r(probe(clips[0].path), 2) if probe is not None and clips else None


def measure(runner, clips: list[Clip], repeats: int = 3, warmup: bool = True) -> dict:
    """Warm-up pass, then `repeats` timed passes over all clips. Texts come from the last pass."""
    if repeats < 1:
        raise BenchError("repeats must be at least 1")
    if warmup:
        timed_pass(runner, clips)
    result = summarize([timed_pass(runner, clips) for _ in range(repeats)], clips)
    result["cross_kv_ms_per_window"] = cross_kv_ms(runner, clips)
    return result


def summarize(passes: list[list[Pass]], clips: list[Clip]) -> dict:
    """Wall times, RTFx (of the median pass), phase times and texts (of the last pass) of timed
    passes over `clips`."""
    walls = [sum(p.wall_s for p in run) for run in passes]
    encoder_ms = [
        1000 * sum(p.encoder_s for p in run) / max(1, sum(p.windows for p in run)) for run in passes
    ]
    decoder_ms = [
        1000 * sum(p.decoder_s for p in run) / max(1, sum(p.tokens for p in run))
        for run in passes
        if all(p.decoder_s is not None for p in run)
    ]
    counted = all(p.tokens is not None for p in passes[-1])
    last = passes[-1]
    audio_s = sum(c.seconds for c in clips)
    median = statistics.median(walls)
    return {
        "audio_s": _r(audio_s, 3),
        "wall_s_median": _r(median),
        "wall_s_min": _r(min(walls)),
        "wall_s_runs": [_r(w) for w in walls],
        "rtfx": _r(audio_s / median, 3),
        "encoder_ms_per_window": _r(statistics.median(encoder_ms), 2),
        "windows": sum(p.windows for p in last),
        "decoder_ms_per_token": _r(statistics.median(decoder_ms), 3) if decoder_ms else None,
        "tokens": sum(p.tokens for p in last) if counted else None,
        "deterministic": all([p.text for p in run] == [p.text for p in last] for run in passes),
        "clips": [
            {
                "file": c.name,
                "seconds": _r(c.seconds, 3),
                "wall_s_median": _r(statistics.median(run[i].wall_s for run in passes)),
                "tokens": last[i].tokens,
                "text": last[i].text,
                "reference": c.reference,
            }
            for i, c in enumerate(clips)
        ],
    }
