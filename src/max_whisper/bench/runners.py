"""Our backends as bench runners: a loaded model whose two phases (encoder, decoder) are timed.

`TimedBackend` wraps the model's backend: every `encode` call (-> encoder ms per 30-s window) and
every decoder-session `logits` / `rearrange` call (-> decoder ms per generated token, EOT included)
adds to a `PhaseTimes`. faster-whisper's runner (faster_whisper_runner.py) fills the same record.
"""

from __future__ import annotations

import copy
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np

from .settings import BATCHED_SIZE, DecodeSettings, Row

CROSS_KV_RUNS = 5  # timed after one untimed call


@dataclass
class PhaseTimes:
    encoder_s: float = 0.0
    windows: int = 0
    decoder_s: float = 0.0
    tokens: int = 0  # decoder steps: one generated token per sequence each (EOT included)

    def reset(self) -> None:
        self.encoder_s, self.windows, self.decoder_s, self.tokens = 0.0, 0, 0.0, 0


class TimedDecoderSession:
    def __init__(self, inner, times: PhaseTimes):
        self._inner, self._times = inner, times

    def logits(self, tokens: np.ndarray, positions: list[int] | None = None) -> np.ndarray:
        start = time.perf_counter()
        out = self._inner.logits(tokens, positions)
        self._times.decoder_s += time.perf_counter() - start
        self._times.tokens += getattr(self._inner, "n_audio", 1)  # a token per window of the batch
        return out

    def rearrange(self, source_indices: list[int]) -> None:
        start = time.perf_counter()
        self._inner.rearrange(source_indices)
        self._times.decoder_s += time.perf_counter() - start

    def __getattr__(self, name):
        return getattr(self._inner, name)


class TimedBackend:
    """A backend that forwards to another and adds up the time spent in each phase."""

    def __init__(self, inner, times: PhaseTimes | None = None):
        self._inner = inner
        self.times = times or PhaseTimes()

    def encode(self, mel: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        out = self._inner.encode(mel)
        self.times.encoder_s += time.perf_counter() - start
        self.times.windows += int(mel.shape[0])
        return out

    def decoder_session(self, audio_features: np.ndarray, **kwargs) -> TimedDecoderSession:
        return TimedDecoderSession(
            self._inner.decoder_session(audio_features, **kwargs), self.times
        )

    def __getattr__(self, name):  # name, dims, device, cross_attention, ...
        return getattr(self._inner, name)


@dataclass
class Pass:
    """One transcription of one clip."""

    text: str
    wall_s: float
    encoder_s: float
    windows: int
    decoder_s: float | None
    tokens: int | None  # None where the engine does not count them (the batched pipeline)
    segments: list[dict] = field(default_factory=list)  # [{"start", "end", "text"}]

    @classmethod
    def timed(
        cls,
        text: str,
        wall_s: float,
        times: PhaseTimes,
        decoder_timed: bool = True,
        segments: list[dict] | None = None,
    ) -> Pass:
        decoder_s, tokens = (times.decoder_s, times.tokens) if decoder_timed else (None, None)
        return cls(
            text, wall_s, times.encoder_s, times.windows, decoder_s, tokens, list(segments or [])
        )


class WhisperRunner:
    """One of our backends. `model` may be given (already loaded) to reuse it."""

    def __init__(
        self,
        model_name: str,
        backend: str,
        device: str = "cpu",
        settings: DecodeSettings = DecodeSettings(),
        model=None,
        batched: bool = False,
    ):
        self.model_name, self.backend, self.device, self.settings = (
            model_name,
            backend,
            device,
            settings,
        )
        self.batched = batched  # the workload's clips together through the batching engine
        self.model = model
        self.times = PhaseTimes()
        self._timed = None

    def load(self) -> None:
        if self.model is None:
            from ..api import load_model

            self.model = load_model(self.model_name, backend=self.backend, device=self.device)
        # a shallow copy whose backend is timed: the loaded model itself stays untouched
        self._timed = copy.copy(self.model)
        self._timed.backend = TimedBackend(self.model.backend, self.times)

    def cross_kv_ms(self, clip_path: str) -> float | None:
        """Median ms of every decoder layer's cross-attention K and V of one window of `clip_path`,
        computed alone (a share of `max`'s encoder time, of `reference`'s decoder time); None for
        the other backends and off the CPU."""
        from .clips import window_mel
        from .stages import IdleGate, cross_kv_call, time_call

        if self._timed is None:
            self.load()
        backend = self.model.backend
        if backend.name not in ("max", "reference") or self.device != "cpu":
            return None
        features = backend.encode(window_mel(self.model.dims.n_mels, clip_path))
        return time_call(cross_kv_call(backend, features), CROSS_KV_RUNS, IdleGate())["median"]

    def transcribe(self, samples: np.ndarray, settings: DecodeSettings | None = None) -> Pass:
        """One clip, under `settings` (default: the runner's own)."""
        if self._timed is None:
            self.load()
        self.times.reset()
        start = time.perf_counter()
        result = self._timed.transcribe(samples, (settings or self.settings).ours())
        wall_s = time.perf_counter() - start
        segments = [{k: s[k] for k in ("start", "end", "text")} for s in result["segments"]]
        return Pass.timed(result["text"].strip(), wall_s, self.times, segments=segments)

    def transcribe_set(self, clips: list[np.ndarray]) -> list[Pass]:
        """All clips at once through the batching engine (BATCHED_SIZE streams): one Pass per clip,
        the wall time shared out by duration, the stage times on the first."""
        if self._timed is None:
            self.load()
        self.times.reset()
        start = time.perf_counter()
        if len(clips) == 1:  # one long file: cut at its pauses, its chunks batched
            results = {
                0: self._timed.transcribe(clips[0], self.settings.ours(), batch_size=BATCHED_SIZE)
            }
        else:
            results = dict(
                self._timed.transcribe_many(clips, self.settings.ours(), batch_size=BATCHED_SIZE)
            )
        wall = time.perf_counter() - start
        total = sum(len(c) for c in clips) or 1
        passes = [
            Pass(results[i]["text"].strip(), wall * len(c) / total, 0.0, 0, 0.0, 0)
            for i, c in enumerate(clips)
        ]
        passes[0] = Pass.timed(passes[0].text, passes[0].wall_s, self.times)
        return passes


def make_runner(
    row: Row, model_name: str, settings: DecodeSettings, ct2_folder: str | None = None, model=None
):
    if row.engine == "faster-whisper":
        from .faster_whisper_runner import FasterWhisperRunner, faster_whisper_folder

        return FasterWhisperRunner(
            ct2_folder or faster_whisper_folder(model_name, tempfile.gettempdir()),
            row.backend,
            row.device,
            settings,
            batched=row.batched,
        )
    return WhisperRunner(
        model_name, row.backend, row.device, settings, model=model, batched=row.batched
    )
