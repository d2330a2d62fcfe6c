"""`TranscribeOptions`: every transcription option, its default and its bounds, in one place.

The Python API, the CLI, the server, the demo and the bench build one of these; `transcribe()`
reads it. The defaults are openai-whisper's `transcribe()` defaults; `cli_defaults()` are the
ones its command line uses. Validation happens here, so every face rejects the same values with
the same one-line message.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .decoding import DecodingOptions
from .errors import UsageError

if TYPE_CHECKING:
    from .vad import VadOptions

DEFAULT_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
DEFAULT_SILENCE_THRESHOLD = -60.0  # dBFS: a window whose peak stays below this holds no speech
PREPEND_PUNCTUATIONS = "\"'“¿([{-"
APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"
# Each beam or sample is one decoder row with its own KV cache; beyond this the cost grows and the
# transcript does not improve (openai-whisper's CLI uses 5).
MAX_BEAM_SIZE = 32
MAX_BEST_OF = 32
TEMPERATURE_RANGE = (0.0, 1.0)  # the OpenAI API's range; above 1 the samples are noise


@dataclass(frozen=True)
class TranscribeOptions:
    # one window's decoding
    task: str = "transcribe"  # or "translate"
    language: str | None = None  # None: detect (multilingual models), "en" for English-only ones
    temperature: float | tuple[float, ...] = DEFAULT_TEMPERATURES  # tried in turn on fallback
    best_of: int | None = None  # samples per window at temperature > 0
    beam_size: int | None = None  # beam search at temperature 0 (None: greedy)
    patience: float | None = None
    length_penalty: float | None = None
    suppress_tokens: str | Iterable[int] | None = "-1"
    suppress_blank: bool = True
    without_timestamps: bool = False
    max_initial_timestamp: float | None = 1.0
    sample_len: int | None = None
    prefix: str | list[int] | None = None  # forced start of every window's text
    # the long-form loop
    compression_ratio_threshold: float | None = 2.4  # above: too repetitive, fall back
    logprob_threshold: float | None = -1.0  # below: too improbable, fall back
    no_speech_threshold: float | None = 0.6  # above (and improbable): silence, skip the window
    condition_on_previous_text: bool = True
    initial_prompt: str | None = None
    carry_initial_prompt: bool = False
    word_timestamps: bool = False
    prepend_punctuations: str = PREPEND_PUNCTUATIONS
    append_punctuations: str = APPEND_PUNCTUATIONS
    clip_timestamps: str | Sequence[float] = "0"
    hallucination_silence_threshold: float | None = None
    silence_threshold: float | None = DEFAULT_SILENCE_THRESHOLD  # dBFS; None: off
    vad_filter: bool = False  # transcribe only the speech Silero VAD finds (the vad extra)
    vad_options: VadOptions | None = None  # its threshold, min silence, speech pad (None: defaults)

    def __post_init__(self):
        temperatures = (
            (self.temperature,) if isinstance(self.temperature, (int, float)) else self.temperature
        )
        temperatures = tuple(float(t) for t in temperatures)
        if not temperatures:
            raise UsageError("temperature: give at least one value")
        low, high = TEMPERATURE_RANGE
        for t in temperatures:
            if not math.isfinite(t) or not low <= t <= high:
                raise UsageError(
                    f"temperature must be a number between {low:g} and {high:g}, got {t:g}"
                )
        object.__setattr__(
            self, "temperature", temperatures if len(temperatures) > 1 else temperatures[0]
        )
        _check_count("beam_size", self.beam_size, MAX_BEAM_SIZE)
        _check_count("best_of", self.best_of, MAX_BEST_OF)
        if self.patience is not None and not (math.isfinite(self.patience) and self.patience > 0):
            raise UsageError(f"patience must be a positive number, got {self.patience}")
        if self.length_penalty is not None and not 0 <= self.length_penalty <= 1:
            raise UsageError(f"length_penalty must be between 0 and 1, got {self.length_penalty}")
        if self.task not in ("transcribe", "translate"):
            raise UsageError(f"task must be 'transcribe' or 'translate', got '{self.task}'")
        for name in (
            "compression_ratio_threshold",
            "logprob_threshold",
            "no_speech_threshold",
            "hallucination_silence_threshold",
            "silence_threshold",
        ):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise UsageError(f"{name} must be a finite number or None, got {value}")

    @classmethod
    def cli_defaults(cls, **overrides) -> TranscribeOptions:
        """openai-whisper's command-line defaults: beam search of 5, 5 samples per fallback
        temperature (its `transcribe()`, like ours, keeps the class defaults: greedy)."""
        return cls(**{"best_of": 5, "beam_size": 5, **overrides})

    @classmethod
    def from_kwargs(
        cls, options: TranscribeOptions | None = None, **overrides
    ) -> TranscribeOptions:
        """`options` (default: the defaults) with `overrides`; an unknown name is a UsageError."""
        unknown = set(overrides) - FIELD_NAMES
        if unknown:
            raise UsageError(f"unknown transcribe option(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(options or cls(), **overrides)

    @property
    def temperatures(self) -> tuple[float, ...]:
        return self.temperature if isinstance(self.temperature, tuple) else (self.temperature,)

    def replace(self, **changes) -> TranscribeOptions:
        return dataclasses.replace(self, **changes)

    def window_options(
        self,
        temperature: float,
        prompt: list[int] | None = None,
        end_not_before: float | None = None,
    ) -> DecodingOptions:
        """The decoding options of one window at one temperature of the fallback."""
        sampling = temperature > 0
        return DecodingOptions(
            task=self.task,
            language=self.language,
            temperature=temperature,
            sample_len=self.sample_len,
            best_of=self.best_of if sampling else None,  # greedy or beam: no best_of
            beam_size=None if sampling else self.beam_size,  # sampling: no beam search
            patience=None if sampling else self.patience,
            length_penalty=self.length_penalty,
            prompt=prompt,
            prefix=self.prefix,
            suppress_tokens=self.suppress_tokens,
            suppress_blank=self.suppress_blank,
            without_timestamps=self.without_timestamps,
            max_initial_timestamp=self.max_initial_timestamp,
            end_not_before=end_not_before,
        )


FIELD_NAMES = frozenset(f.name for f in dataclasses.fields(TranscribeOptions))


def fallback_temperatures(start: float, increment: float | None) -> float | tuple[float, ...]:
    """openai-whisper's CLI: `start`, then `start + increment`, ... up to 1.0
    (None: `start` only)."""
    if increment is None:
        return start
    if not (math.isfinite(increment) and increment > 0):
        raise UsageError(
            f"temperature increment must be a positive number or None, got {increment:g}"
        )
    steps = []
    t = start
    while t <= 1.0 + 1e-6:
        steps.append(round(t, 6))
        t += increment
    return tuple(steps) or start


def _check_count(name: str, value: int | None, limit: int) -> None:
    if value is None:
        return
    if value < 1:
        raise UsageError(f"{name} must be at least 1, got {value}")
    if value > limit:
        raise UsageError(
            f"{name} must be at most {limit} (each is one decoder row with its own cache: "
            f"more only costs memory and time), got {value}"
        )
