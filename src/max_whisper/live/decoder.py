"""The one place live transcription reaches the model.

`LiveDecoder.decode_many` decodes the buffers of several live streams together (one batch of the
batching engine, each with its own prompt), for a process that owns its model (`max-whisper live`);
`EngineDecoder` submits each buffer as a stream of an engine service (the server's), so concurrent
sessions' decodes and the server's other requests share its batches, on the one thread that runs
the model.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ..engine import BatchingEngine
from ..options import TranscribeOptions
from ..transcribe import transcription_stream
from .policy import Request

# One greedy pass: a temperature fallback on a buffer cut mid-word would only add noise and time.
LIVE_OPTIONS = TranscribeOptions(temperature=0.0, condition_on_previous_text=False)


def request_options(options: TranscribeOptions, request: Request) -> TranscribeOptions:
    return options.replace(initial_prompt=request.prompt or None)


class LiveDecoder:
    """`model`: a loaded model, or a function that gives it (called on the first decode)."""

    def __init__(self, model, options: TranscribeOptions = LIVE_OPTIONS):
        self.source, self.options = model, options

    @property
    def model(self):
        return self.source() if callable(self.source) else self.source

    def decode_many(self, requests: list[Request]) -> list[dict | Exception]:
        """Each request's transcription ({"text", "segments", ...}), or the exception it met."""
        model = self.model
        streams = [
            transcription_stream(model, r.audio, request_options(self.options, r)) for r in requests
        ]
        engine = BatchingEngine(model.backend, model.tokenizer, batch_size=len(requests))
        results = dict(engine.run(streams))
        return [results[i] for i in range(len(requests))]

    def decode(self, request: Request) -> dict:
        (result,) = self.decode_many([request])
        if isinstance(result, Exception):
            raise result
        return result


class EngineDecoder:
    """Async decodes for many sessions on an engine service (engine_service.EngineService), or on
    the one a function gives (called on a worker thread at the first decode)."""

    def __init__(self, service, options: TranscribeOptions = LIVE_OPTIONS):
        self.options = options
        self.service = None if callable(service) else service
        self.make: Callable[[], object] | None = service if callable(service) else None
        self.starting = asyncio.Lock()

    async def decode(self, request: Request) -> dict:
        if self.service is None:
            async with self.starting:
                if self.service is None:
                    self.service = await asyncio.to_thread(self.make)
        future = self.service.submit(request.audio, request_options(self.options, request))
        return await asyncio.wrap_future(future)  # cancelled with the session: the stream leaves
