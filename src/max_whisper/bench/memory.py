"""`max-whisper bench --mode memory`: peak RSS of one long transcription, in a fresh process.

The clips repeated with 2 s of silence after each, up to `minutes` of audio, transcribed with one
backend (temperature 0, no conditioning on previous text).
"""

from __future__ import annotations

import time

from ..dims import SAMPLE_RATE
from .clips import default_audio, expand_audio, long_form_audio
from .measure import peak_rss_mb
from .settings import BenchError
from .worker import run_worker

GAP_S = 2.0  # silence after each clip


def child(spec: dict) -> dict:
    from ..api import load_model
    from ..audio import load_audio

    model = load_model(spec["model"], backend=spec["backend"])
    rss_loaded = peak_rss_mb()
    n = int(spec["minutes"] * 60 * SAMPLE_RATE)
    audio = long_form_audio(
        [load_audio(p) for p in spec["audio"]], n / SAMPLE_RATE, pauses=(GAP_S,)
    )[:n]
    start = time.perf_counter()
    result = model.transcribe(audio, temperature=0.0, condition_on_previous_text=False)
    wall = time.perf_counter() - start
    return {
        "model": spec["model"],
        "backend": spec["backend"],
        "audio_s": len(audio) / SAMPLE_RATE,
        "wall_s": round(wall, 1),
        "rtfx": round(len(audio) / SAMPLE_RATE / wall, 2),
        "segments": len(result["segments"]),
        "peak_rss_mb_after_load": round(rss_loaded),
        "peak_rss_mb": round(peak_rss_mb()),
    }


def run_memory(
    minutes: float = 60.0,
    model: str = "tiny.en",
    backend: str = "max",
    audio: list[str] | None = None,
) -> dict:
    if minutes <= 0:
        raise BenchError("--minutes must be positive")
    paths = expand_audio(audio if audio is not None else default_audio())
    result = run_worker(
        {
            "task": "memory",
            "model": model,
            "backend": backend,
            "minutes": minutes,
            "audio": [str(p) for p in paths],
        }
    )
    if "error" in result:
        raise BenchError(f"the transcription failed: {result['error']}")
    return result
