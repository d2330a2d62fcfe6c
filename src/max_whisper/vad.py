"""Voice-activity detection with the Silero VAD v6 network, run by onnxruntime (optional extra).

The model file comes from an installed package (faster-whisper's wheel or silero-vad's), never from
the network. `speech_spans` turns the network's per-frame speech probabilities into speech stretches
with Silero's rules (hysteresis, minimum speech and silence, maximum length, padding); `SpeechMap`
cuts the silence out of the audio and maps transcription times back; `chunks` packs the stretches
of a long file into windows for batched transcription.
"""

from __future__ import annotations

import importlib.util
import math
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import accumulate
from pathlib import Path

import numpy as np

from .dims import SAMPLE_RATE
from .errors import MaxWhisperError, UsageError

__all__ = [
    "VadOptions",
    "VadUnavailable",
    "SpeechMap",
    "SpeechStream",
    "chunks",
    "find_model",
    "speech_probabilities",
    "speech_spans",
    "spans_from_probabilities",
]

FRAME = 512  # samples the network judges at a time (32 ms at 16 kHz)
CONTEXT = 64  # samples of the previous frame it also sees
BLOCK = 1024  # frames per session call for the sequence models (33 s of audio)
MODEL_FILES = (  # (package, path inside it), in order of preference
    ("faster_whisper", "assets/silero_vad_v6.onnx"),
    ("silero_vad", "data/silero_vad_16k_sequence.onnx"),
    ("silero_vad", "data/silero_vad.onnx"),
)
Span = tuple[int, int]


class VadUnavailable(MaxWhisperError):
    """onnxruntime or the Silero model file is not installed."""


_INSTALL = (
    "voice activity detection needs onnxruntime and the Silero VAD model: "
    "pip install 'max-whisper[vad]'"
)


@dataclass(frozen=True)
class VadOptions:
    """Silero's tuning knobs, with faster-whisper's defaults and meanings.

    threshold: a frame whose probability reaches it starts (or continues) speech.
    neg_threshold: inside speech, only frames below it count as silence (default threshold - 0.15).
    min_speech_duration_ms: stretches shorter than this are dropped.
    max_speech_duration_s: longer stretches are split at their last pause over 98 ms, else cut hard.
    min_silence_duration_ms: silence must last this long to end a stretch.
    speech_pad_ms: each stretch is widened by this much on both sides (halving shorter gaps).
    """

    threshold: float = 0.5
    neg_threshold: float | None = None
    min_speech_duration_ms: float = 250
    max_speech_duration_s: float = math.inf
    min_silence_duration_ms: float = 2000
    speech_pad_ms: float = 400

    def __post_init__(self):
        def check(name, ok):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(value):
                raise UsageError(f"VAD option {name}={value!r} is out of range")

        check("threshold", lambda v: 0 < v <= 1)
        if self.neg_threshold is not None:
            check("neg_threshold", lambda v: 0 <= v <= self.threshold)
        for name in ("min_speech_duration_ms", "min_silence_duration_ms", "speech_pad_ms"):
            check(name, lambda v: 0 <= v < math.inf)
        check("max_speech_duration_s", lambda v: v > (FRAME + 2 * self._pad) / SAMPLE_RATE)

    @property
    def off_threshold(self) -> float:
        """The threshold below which a frame inside speech counts as silence."""
        if self.neg_threshold is not None:
            return self.neg_threshold
        return min(self.threshold, max(self.threshold - 0.15, 0.01))

    @property
    def _pad(self) -> int:
        return int(SAMPLE_RATE * self.speech_pad_ms / 1000)


# Cutting a recording into chunks batched together (transcribe_chunked): a pause of 160 ms ends a
# stretch, so that the pauses between sentences are cut out of a chunk too, and a stretch over
# 30 s is split at a pause (faster-whisper's batched defaults).
CHUNKING_OPTIONS = VadOptions(min_silence_duration_ms=160, max_speech_duration_s=30.0)


# --- the network ----------------------------------------------------------------------


def _find(package: str, relative: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(package)  # locates a top-level package without importing it
    except (ImportError, ValueError):
        return None
    roots = (spec.submodule_search_locations or []) if spec else []
    return next((Path(r, relative) for r in roots if Path(r, relative).is_file()), None)


def find_model() -> Path:
    """The first Silero VAD ONNX file found in an installed package."""
    for package, relative in MODEL_FILES:
        if path := _find(package, relative):
            return path
    raise VadUnavailable(_INSTALL)


@lru_cache(maxsize=4)
def _session(path: str):
    try:
        import onnxruntime
    except ImportError:
        raise VadUnavailable(_INSTALL) from None
    opts = onnxruntime.SessionOptions()
    # one thread: MAX's workers spin-wait for a while after each graph run, and a second thread
    # here would fight them for the cores whenever the VAD follows a transcription (README, VAD)
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return onnxruntime.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])


class SpeechStream:
    """Speech probabilities of audio that arrives in pieces: the network's recurrent state and the
    tail of the last frame carry from one piece to the next, so the probabilities are those of all
    the audio at once, however it was cut (a live stream's VAD must not depend on how its audio
    came in). Pieces are whole 512-sample frames; only the last may be short (it is zero-padded)."""

    def __init__(self, model_path: str | Path | None = None):
        path = str(model_path or find_model())
        self.session = _session(path)
        names = {i.name for i in self.session.get_inputs()}
        if {"input", "h", "c"} <= names:  # sequence model: the LSTM runs over all frames of a call
            self.per_frame = False
        elif {"input", "state"} <= names:  # one frame per call (its batch axis holds streams)
            self.per_frame = True
        else:
            raise VadUnavailable(f"{path} is not a Silero VAD model (inputs {sorted(names)})")
        self.rate = {"sr": np.array(SAMPLE_RATE, dtype=np.int64)} if "sr" in names else {}
        self.tail = np.zeros(CONTEXT, dtype=np.float32)  # silence before the first frame
        if self.per_frame:
            self.state = {"state": np.zeros((2, 1, 128), dtype=np.float32)}
        else:
            self.state = dict.fromkeys(("h", "c"), np.zeros((1, 1, 128), dtype=np.float32))

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        audio = np.asarray(audio, dtype=np.float32)
        if audio.ndim != 1:
            raise UsageError(f"VAD needs mono audio (one dimension), got shape {audio.shape}")
        n = -(-len(audio) // FRAME)
        frames = np.pad(audio, (0, n * FRAME - len(audio))).reshape(n, FRAME)
        probs = np.empty(n, dtype=np.float32)
        if n == 0:
            return probs
        # each frame is seen with the last CONTEXT samples before it
        inputs = np.hstack([np.vstack([self.tail, frames[:-1, -CONTEXT:]]), frames])
        self.tail = frames[-1, -CONTEXT:].copy()
        step = 1 if self.per_frame else BLOCK
        for i in range(0, n, step):
            feed = {"input": inputs[i : i + step], **self.state, **self.rate}
            out, *state = self.session.run(None, feed)
            self.state = dict(zip(self.state, state))
            probs[i : i + step] = np.reshape(out, -1)
        return probs


def speech_probabilities(audio: np.ndarray, model_path: str | Path | None = None) -> np.ndarray:
    """Speech probability of each 512-sample frame of 16 kHz mono audio (last one zero-padded)."""
    return SpeechStream(model_path)(audio)


# --- from probabilities to speech stretches --------------------------------------------


def spans_from_probabilities(
    probs: Sequence[float], n_samples: int, options: VadOptions = VadOptions()
) -> list[Span]:
    """Silero's rules on per-frame probabilities: [start, end) samples of each speech stretch."""
    rate = SAMPLE_RATE / 1000  # samples per millisecond
    on, off = options.threshold, options.off_threshold
    min_speech = options.min_speech_duration_ms * rate
    min_silence = options.min_silence_duration_ms * rate
    pad = options._pad
    max_len = options.max_speech_duration_s * SAMPLE_RATE - FRAME - 2 * pad
    usable_pause = 98 * rate  # a pause long enough to split an over-long stretch at

    found: list[list[int]] = []
    start = quiet = cut = resume = None  # stretch start, silence start, split point, speech after
    for i, p in enumerate(probs):
        t = i * FRAME
        if p >= on and quiet is not None:  # speech is back before the silence was long enough
            quiet = None
            if cut is not None and (resume is None or resume < cut):
                resume = t
        if p >= on and start is None:
            start = t
            continue
        if start is not None and t - start > max_len:  # too long: split at the last usable pause
            if cut is None:
                found.append([start, t])
                start = quiet = resume = None
                continue
            found.append([start, cut])
            start = resume if resume is not None and resume >= cut else None
            quiet = cut = resume = None
        if start is not None and p < off:
            quiet = t if quiet is None else quiet
            if t - quiet > usable_pause:
                cut = quiet
            if t - quiet >= min_silence:  # the stretch ended where the silence began
                if quiet - start > min_speech:
                    found.append([start, quiet])
                start = quiet = cut = resume = None
    if start is not None and n_samples - start > min_speech:
        found.append([start, n_samples])

    if found:  # padding: each side gets `pad`, but a gap narrower than two pads is split in half
        found[0][0] = max(0, found[0][0] - pad)
    for span, following in zip(found, found[1:]):
        gap = following[0] - span[1]
        share = gap // 2 if gap < 2 * pad else pad
        span[1], following[0] = span[1] + share, following[0] - share
    return [
        (int(s), int(min(e + (pad if k == len(found) - 1 else 0), n_samples)))
        for k, (s, e) in enumerate(found)
    ]


def speech_spans(
    audio: np.ndarray, options: VadOptions = VadOptions(), model_path: str | Path | None = None
) -> list[Span]:
    """[start, end) sample of each speech stretch of 16 kHz mono audio."""
    return spans_from_probabilities(speech_probabilities(audio, model_path), len(audio), options)


def chunks(
    spans: Sequence[Span], max_seconds: float = 30.0, sample_rate: int = SAMPLE_RATE
) -> list[Span]:
    """Spans packed greedily, in order, into chunks that hold at most `max_seconds` of speech
    (the pauses inside a chunk are cut out when it is collected: SpeechMap), so that each chunk
    fills one window; a span longer than that is cut every `max_seconds`, in chunks of its own."""
    limit = int(max_seconds * sample_rate) if max_seconds > 0 else 0
    if limit <= 0:
        raise UsageError(f"max_seconds must be positive, got {max_seconds}")
    packed: list[list[int]] = []
    speech = limit  # speech in the last chunk: full before the first span
    for s, e in sorted(spans):
        while e - s > limit:
            packed.append([s, s + limit])
            s, speech = s + limit, limit
        if speech + (e - s) <= limit:
            packed[-1][1] = max(packed[-1][1], e)
            speech += e - s
        else:
            packed.append([s, e])
            speech = e - s
    return [(s, e) for s, e in packed]


# --- cutting the silence out, and putting it back into timestamps ----------------------


class SpeechMap:
    """The speech spans of one recording, concatenated: times in the shorter audio map back."""

    def __init__(self, spans: Sequence[Span], sample_rate: int = SAMPLE_RATE):
        self.spans = [(int(s), int(e)) for s, e in spans]
        self.sample_rate = sample_rate
        if any(s < 0 or e <= s for s, e in self.spans) or any(
            a[1] > b[0] for a, b in zip(self.spans, self.spans[1:])
        ):
            raise UsageError("speech spans must be non-empty, ordered and non-overlapping")
        self._ends = list(accumulate(e - s for s, e in self.spans))  # span ends, once collected
        self._shift = [s - (end - (e - s)) for (s, e), end in zip(self.spans, self._ends)]

    @property
    def duration(self) -> float:
        """Seconds of speech, i.e. the length of collect()'s result."""
        return (self._ends[-1] if self._ends else 0) / self.sample_rate

    def collect(self, audio: np.ndarray) -> np.ndarray:
        """The speech parts of `audio`, end to end."""
        if not self.spans:
            return np.zeros(0, dtype=np.asarray(audio).dtype)
        return np.concatenate([audio[s:e] for s, e in self.spans])

    def to_original(self, seconds: float, is_end: bool = False) -> float:
        """A time in the collected audio as a time in the original one. A time exactly at a joint
        belongs to the next span, or with `is_end` to the previous one (where an end belongs)."""
        if not self.spans:
            return seconds
        sample = round(seconds * self.sample_rate)
        k = (bisect_left if is_end else bisect_right)(self._ends, sample)
        return seconds + self._shift[min(k, len(self.spans) - 1)] / self.sample_rate

    def restore(self, result: dict) -> dict:
        """A copy of a transcription result with segment and word times in original-audio time."""

        def moved(item: dict) -> dict:
            item = dict(item)
            for key, is_end in (("start", False), ("end", True)):
                if isinstance(item.get(key), (int, float)):
                    item[key] = round(self.to_original(item[key], is_end), 3)
            if isinstance(item.get("words"), list):
                item["words"] = [moved(w) for w in item["words"]]
            return item

        result = dict(result)
        if isinstance(result.get("segments"), list):
            result["segments"] = [moved(s) for s in result["segments"]]
        return result
