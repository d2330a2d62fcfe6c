"""The Python API: `load_model(name, backend=...)` and `WhisperModel.transcribe(audio)`."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from .audio import first_window_mel, load_audio
from .audio_stream import StreamedAudio
from .backends import DEFAULT_BACKEND, create_backend
from .decoding import DecodingOptions, DecodingResult, decode, detect_language
from .engine import DEFAULT_BATCH_SIZE, BatchingEngine
from .options import TranscribeOptions
from .tokenizer import Tokenizer, TokenizerError, get_tokenizer
from .transcribe import transcribe
from .weights import ModelWeights, load_model_weights
from .weights.registry import DEFAULT_MODEL, NAMED_MODELS


class WhisperModel:
    """One model (weights + tokenizer) running on one backend."""

    def __init__(
        self,
        weights: ModelWeights,
        backend: str = DEFAULT_BACKEND,
        device: str = "auto",
        encoder_float64_blocks: int = 0,
        warm_start: bool = False,
    ):
        self.weights = weights
        self.name = weights.name
        self.dims = weights.dims
        self.tokenizer: Tokenizer = get_tokenizer(
            str(_tokenizer_path(weights)), self.dims.is_multilingual, self.dims.num_languages
        )
        self.backend = create_backend(backend, weights, device, encoder_float64_blocks, warm_start)
        self.backend_name = backend

    @property
    def is_multilingual(self) -> bool:
        return self.dims.is_multilingual

    @property
    def device(self) -> str:
        return self.backend.device

    @property
    def alignment_heads(self) -> np.ndarray:
        """(layer, head) pairs whose cross-attention follows the speech; default: the upper half."""
        if self.weights.alignment_heads is not None:
            return np.asarray(self.weights.alignment_heads)
        layers, heads = self.dims.n_text_layer, self.dims.n_text_head
        return np.array([(layer, h) for layer in range(layers // 2, layers) for h in range(heads)])

    def transcribe(
        self,
        audio: str | os.PathLike | np.ndarray,
        options: TranscribeOptions | None = None,
        batch_size: int = 1,
        **overrides,
    ) -> dict:
        """Transcribe a file or 16 kHz mono float32 samples: {"text", "segments", "language"}.

        `options` (a TranscribeOptions) and/or keyword overrides of its fields, plus `on_progress`
        and `on_segment` callbacks (see transcribe.transcribe). batch_size > 1: the recording is
        cut at its VAD pauses into chunks of at most 30 s, decoded `batch_size` at a time (the vad
        extra; faster on long files, no previous text carried between chunks)."""
        if batch_size > 1:
            from .transcribe import transcribe_chunked

            on_segment = overrides.pop("on_segment", None)
            overrides.pop("on_progress", None)
            return transcribe_chunked(
                self,
                audio,
                TranscribeOptions.from_kwargs(options, **overrides),
                batch_size,
                on_segment,
            )
        if not isinstance(audio, (np.ndarray, StreamedAudio)):
            audio = StreamedAudio(audio, n_mels=self.dims.n_mels)  # window by window: flat memory
        return transcribe(self, audio, options, **overrides)

    def transcribe_many(
        self,
        audios: Iterable[str | os.PathLike | np.ndarray],
        options: TranscribeOptions | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        on_segment: Callable[[int, dict], None] | None = None,
        options_for: Callable[[int], TranscribeOptions] | None = None,
        **overrides,
    ) -> Iterator[tuple[int, dict | Exception]]:
        """Transcribe many recordings at once, their windows batched `batch_size` at a time.

        Yields (index into `audios`, result) as each recording finishes: the same result
        `transcribe` gives it alone, or the exception that stopped that recording (the others go
        on). on_segment(index, segment) sees each segment as it is decoded. options_for(index),
        where given, is that recording's own options instead of `options`."""
        from .transcribe import transcription_stream

        options = TranscribeOptions.from_kwargs(options, **overrides)
        streams = (
            transcription_stream(
                self,
                audio,
                options if options_for is None else options_for(index),
                on_segment=None if on_segment is None else functools.partial(on_segment, index),
            )
            for index, audio in enumerate(audios)
        )
        yield from BatchingEngine(self.backend, self.tokenizer, batch_size).run(streams)

    def embed_audio(self, mel: np.ndarray) -> np.ndarray:
        return self.backend.encode(np.ascontiguousarray(mel, dtype=np.float32))

    def decode(
        self, mel_or_features: np.ndarray, options: DecodingOptions = DecodingOptions(), **overrides
    ) -> list[DecodingResult]:
        """Decode 30-s windows given as mel [n, n_mels, 3000] or encoder features [n, ctx, d]."""
        return decode(
            self.backend, self.tokenizer, self._features(mel_or_features), options, **overrides
        )

    def detect_language(
        self, audio: str | os.PathLike | np.ndarray
    ) -> tuple[str, dict[str, float]]:
        """Language of the first 30 s: (code, {code: probability})."""
        if not isinstance(audio, np.ndarray):
            audio = load_audio(audio)
        mel = first_window_mel(audio, self.dims.n_mels)
        _, probs = detect_language(self.backend, self.tokenizer, self.embed_audio(mel[None]))
        return max(probs[0], key=probs[0].get), probs[0]

    def _features(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if x.ndim == 2:
            x = x[None]
        if x.shape[-2:] == (self.dims.n_audio_ctx, self.dims.n_audio_state):
            return x
        return self.embed_audio(x)


def _tokenizer_path(weights: ModelWeights) -> Path:
    """The model's own tokenizer.json, else the bundled one of the same kind (English or
    multilingual)."""
    if weights.tokenizer_path is not None:
        return Path(weights.tokenizer_path)
    fallback = "base" if weights.dims.is_multilingual else "tiny.en"
    try:
        return NAMED_MODELS[fallback].locate()[0].parent / "tokenizer.json"
    except Exception as exc:
        raise TokenizerError(
            f"no tokenizer.json beside the weights and none bundled: {exc}"
        ) from None


def load_model(
    name: str | os.PathLike = DEFAULT_MODEL,
    backend: str = DEFAULT_BACKEND,
    device: str = "auto",
    encoder_float64_blocks: int = 0,
    warm_start: bool = False,
) -> WhisperModel:
    """Load a named model ("tiny.en", "base") or a path (CTranslate2, OpenAI .pt, HF safetensors).

    encoder_float64_blocks (max and hybrid backends): compute that many leading encoder blocks in
    float64, for features nearer the exact result at about twice those blocks' cost (default 0).
    warm_start (max backend): where this machine has not compiled the model's MAX graphs yet, start
    compiling them in the background and run this model on the NumPy implementation of the same
    network (said on stderr) instead of waiting.
    """
    return WhisperModel(
        load_model_weights(name),
        backend=backend,
        device=device,
        encoder_float64_blocks=encoder_float64_blocks,
        warm_start=warm_start,
    )
