"""What every part of the bench shares: its constants, the decoding options, a row, its error."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

from ..errors import MaxWhisperError
from ..options import TranscribeOptions

SCHEMA = "max-whisper-bench/1"
DEFAULT_BACKENDS = ("max", "hybrid", "reference", "faster-whisper")
DEFAULT_MODELS = ("tiny.en", "base")
FASTER_WHISPER_TYPES = ("int8", "fp32")
BATCHED_SIZE = 8  # faster-whisper's BatchedInferencePipeline row: its default batch size
WORKLOADS = ("short", "long")  # the clips one by one; one long file made of them with pauses
LONG_FORM_SECONDS = 180.0  # the long-form file: at least this long
LONG_FORM_PAUSES_S = (2.0, 6.0, 1.5, 10.0, 3.0)  # silences between clips, in turn
CT2_COMPUTE_TYPE = {"int8": "int8", "fp32": "float32"}
OUR_BACKENDS = ("max", "hybrid", "reference")
MAX_BACKENDS = ("max", "hybrid")  # the ones that compile MAX graphs: cold compile applies


class BenchError(MaxWhisperError):
    pass


# -- options shared by every engine ---------------------------------------------------------------
@dataclass(frozen=True)
class DecodeSettings:
    language: str = "en"
    beam_size: int = 1  # 1: greedy
    temperature: float = 0.0  # one temperature: no fallback
    condition_on_previous_text: bool = False

    def ours(self) -> TranscribeOptions:
        return TranscribeOptions(
            language=self.language,
            temperature=self.temperature,
            beam_size=self.beam_size if self.beam_size > 1 else None,
            condition_on_previous_text=self.condition_on_previous_text,
        )

    def faster_whisper(self) -> dict:
        return dict(
            language=self.language,
            temperature=[self.temperature],
            beam_size=self.beam_size,
            best_of=1,
            condition_on_previous_text=self.condition_on_previous_text,
            vad_filter=False,
        )


# -- rows -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    """One engine: our backend on a device, or faster-whisper with a compute type on a device."""

    name: str  # "max", "max-gpu", "reference", "reference-cuda", "faster-whisper-int8", ...
    engine: str  # "max-whisper" or "faster-whisper"
    backend: str  # ours: max | hybrid | reference; faster-whisper: int8 | fp32
    device: str  # "cpu" or "gpu"
    batched: bool = False  # faster-whisper's BatchedInferencePipeline (VAD chunks, batch of 8)

    @property
    def is_gpu(self) -> bool:
        return self.device == "gpu"


def log_to_stderr(message: str) -> None:
    """The bench's progress lines: on stderr, so that stdout carries only the JSON."""
    print(f"bench: {message}", file=sys.stderr, flush=True)


def _r(x: float | None, digits: int = 4) -> float | None:
    """`x` rounded for the JSON; None for None, inf and nan."""
    return None if x is None or not math.isfinite(x) else round(x, digits)
