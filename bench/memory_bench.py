"""Peak memory of a long transcription: the shared clips repeated (with 2 s of silence between them)
up to the requested duration, transcribed with the default backend. Prints JSON.

    python bench/memory_bench.py --minutes 60 [--model tiny.en] [--backend max]
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from max_whisper import load_model  # noqa: E402
from max_whisper.audio import load_audio  # noqa: E402
from max_whisper.dims import SAMPLE_RATE  # noqa: E402


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def long_audio(minutes: float) -> np.ndarray:
    clips = [load_audio(p) for p in sorted((REPO.parent / "shared" / "audio").glob("*.wav"))]
    gap = np.zeros(2 * SAMPLE_RATE, dtype=np.float32)
    one_round = np.concatenate([x for clip in clips for x in (clip, gap)])
    repeats = int(np.ceil(minutes * 60 * SAMPLE_RATE / len(one_round)))
    return np.tile(one_round, repeats)[: int(minutes * 60 * SAMPLE_RATE)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--backend", default="max")
    args = parser.parse_args()
    model = load_model(args.model, backend=args.backend)
    rss_loaded = peak_rss_mb()
    audio = long_audio(args.minutes)
    start = time.perf_counter()
    result = model.transcribe(audio, temperature=0.0, condition_on_previous_text=False)
    wall = time.perf_counter() - start
    print(json.dumps({
        "model": args.model, "backend": args.backend, "audio_s": len(audio) / SAMPLE_RATE, "wall_s": round(wall, 1),
        "rtfx": round(len(audio) / SAMPLE_RATE / wall, 2), "segments": len(result["segments"]),
        "peak_rss_mb_after_load": round(rss_loaded), "peak_rss_mb": round(peak_rss_mb()),
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
