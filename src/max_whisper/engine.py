"""The batching engine: many transcription streams at once, their windows batched on one backend.

A stream is a generator (transcribe.transcription_stream) that yields what it needs next — an
`Encode` of a 30-s mel window, a `Decode` of encoded features under some options, a
`DetectLanguage` — and is sent back the answer; its return value is the transcription. The engine
keeps up to `batch_size` streams in flight: each round it encodes every waiting window in one
call, then decodes every waiting window in batches of windows that share their options (each with
its own prompt), and hands each stream its answer. A stream that ends frees its slot for the next
one (continuous batching), so a short file never waits for a long one. A live source (the
server's engine service) may yield None for "no new stream yet": the running ones go on, and the
engine asks again after the next round.

Batching changes no result: each window is decoded as it would be alone (see decoding.DecodingTask).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from .backends.base import Backend
from .decoding import PER_WINDOW, DecodingOptions, DecodingResult, decode, detect_language
from .tokenizer import Tokenizer

DEFAULT_BATCH_SIZE = 8


@dataclass
class Encode:
    mel: np.ndarray  # [n_mels, 3000]; answered with features [n_audio_ctx, d]


@dataclass
class Decode:
    features: np.ndarray  # [n_audio_ctx, d]
    options: DecodingOptions  # its prompt is this window's own; answered with a DecodingResult
    on_step: Callable[[np.ndarray], None] | None = None  # sees this window's token rows each step


@dataclass
class DetectLanguage:
    features: np.ndarray  # answered with {language code: probability}


Request = Encode | Decode | DetectLanguage
Stream = Generator[Request, Any, Any]


class BatchingEngine:
    """Runs streams on one backend, `batch_size` windows at a time."""

    def __init__(
        self, backend: Backend, tokenizer: Tokenizer, batch_size: int = DEFAULT_BATCH_SIZE
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.backend, self.tokenizer, self.batch_size = backend, tokenizer, batch_size
        # windows with prompts of different lengths share a batch only where the backend pads rows
        self.ragged = getattr(backend, "ragged_batches", False)
        self.largest_batch = 0  # the most windows decoded together so far

    def run_one(self, stream: Stream) -> Any:
        result = next(iter(self.run([stream])))[1]
        if isinstance(result, Exception):
            raise result
        return result

    def run(self, streams: Iterable[Stream]) -> Iterator[tuple[int, Any]]:
        """Yield (index of the stream, its result) as each stream ends. A stream that fails on its
        own (its audio cannot be read, ...) ends with the exception as its result; the others go
        on."""
        waiting = enumerate(streams)
        active: dict[
            int, tuple[Stream, Request]
        ] = {}  # stream index -> (stream, what it asked for)

        def admit() -> Iterator[tuple[int, Any]]:
            while len(active) < self.batch_size:
                item = next(waiting, None)
                if item is None:
                    return
                index, stream = item
                if stream is None:  # none ready yet: admit again after the next round
                    return
                yield from self._advance(active, index, stream, None, first=True)

        yield from admit()
        while active:
            for kind in (DetectLanguage, Encode, Decode):
                asking = [i for i, (_, request) in active.items() if isinstance(request, kind)]
                for batch in self._batches(kind, [(i, active[i][1]) for i in asking]):
                    answers = self._answer(kind, [request for _, request in batch])
                    for (index, _), answer in zip(batch, answers):
                        yield from self._advance(active, index, active[index][0], answer)
                if asking:
                    break  # one kind per round: a stream's next request may be of another kind
            yield from admit()

    @staticmethod
    def _advance(
        active, index: int, stream: Stream, answer, first: bool = False
    ) -> Iterator[tuple[int, Any]]:
        try:
            active[index] = (stream, next(stream) if first else stream.send(answer))
        except StopIteration as done:
            active.pop(index, None)
            yield index, done.value
        except Exception as exc:  # this stream's own failure: it ends, the others go on
            active.pop(index, None)
            yield index, exc

    def _batches(self, kind, asking: list[tuple[int, Request]]) -> list[list[tuple[int, Request]]]:
        if kind is not Decode:
            return [asking[i : i + self.batch_size] for i in range(0, len(asking), self.batch_size)]
        groups: dict[tuple, list[tuple[int, Request]]] = {}
        for index, request in asking:
            groups.setdefault(self._decode_key(request.options), []).append((index, request))
        return [
            group[i : i + self.batch_size]
            for group in groups.values()
            for i in range(0, len(group), self.batch_size)
        ]

    def _decode_key(self, options: DecodingOptions) -> tuple:
        """Windows decode together when everything but their own fields (the prompt, ...) is the
        same (and, on backends that cannot pad rows, the prompt's length too)."""
        key = repr(dataclasses.replace(options, **dict.fromkeys(PER_WINDOW)))
        if self.ragged:
            return (key,)
        prompt = options.prompt
        return key, len(prompt) if isinstance(prompt, (list, tuple)) else prompt

    def _answer(self, kind, requests: list[Request]) -> list:
        if kind is Encode:
            features = self.backend.encode(np.stack([r.mel for r in requests]))
            return list(features)
        features = np.stack([r.features for r in requests])
        if kind is DetectLanguage:
            return detect_language(self.backend, self.tokenizer, features)[1]
        options = requests[0].options
        self.largest_batch = max(self.largest_batch, len(requests))
        results: list[DecodingResult] = decode(
            self.backend,
            self.tokenizer,
            features,
            options,
            windows=[r.options for r in requests],
            on_step=_each_window([r.on_step for r in requests]),
        )
        return results


def _each_window(callbacks: list) -> Callable[[np.ndarray, list[int]], None] | None:
    """One on_step for a batch that hands each window's callback its own rows."""
    if not any(callbacks):
        return None

    def on_step(tokens: np.ndarray, windows: list[int]) -> None:
        rows = tokens.shape[0] // len(windows)
        for k, window in enumerate(windows):
            if callbacks[window] is not None:
                callbacks[window](tokens[k * rows : (k + 1) * rows])

    return on_step
