"""The one place live transcription reaches the model.

`LiveDecoder.decode_many` decodes the buffers of several live streams together (one batch of the
batching engine, each with its own prompt); `SharedDecoder` lets concurrent sessions' requests
wait for the running batch and go together into the next, on the executor that alone runs the
model.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor

from ..engine import BatchingEngine
from ..options import TranscribeOptions
from ..transcribe import transcription_stream
from .policy import Request

# One greedy pass: a temperature fallback on a buffer cut mid-word would only add noise and time.
LIVE_OPTIONS = TranscribeOptions(temperature=0.0, condition_on_previous_text=False)


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
            transcription_stream(
                model, r.audio, self.options.replace(initial_prompt=r.prompt or None)
            )
            for r in requests
        ]
        engine = BatchingEngine(model.backend, model.tokenizer, batch_size=len(requests))
        results = dict(engine.run(streams))
        return [results[i] for i in range(len(requests))]

    def decode(self, request: Request) -> dict:
        (result,) = self.decode_many([request])
        if isinstance(result, Exception):
            raise result
        return result


class SharedDecoder:
    """Async front of a LiveDecoder for many sessions: requests that arrive while a batch runs
    are decoded together next."""

    def __init__(self, decoder: LiveDecoder, executor: Executor):
        self.decoder, self.executor = decoder, executor
        self.waiting: list[tuple[Request, asyncio.Future]] = []
        self.running = False

    async def decode(self, request: Request) -> dict:
        answer = asyncio.get_running_loop().create_future()
        self.waiting.append((request, answer))
        self._start()
        return await answer

    def _start(self) -> None:
        self.waiting = [(r, a) for r, a in self.waiting if not a.cancelled()]
        if self.running or not self.waiting:
            return
        batch, self.waiting, self.running = self.waiting, [], True
        job = asyncio.get_running_loop().run_in_executor(
            self.executor, self.decoder.decode_many, [r for r, _ in batch]
        )
        job.add_done_callback(lambda done: self._finish(batch, done))

    def _finish(self, batch, job: asyncio.Future) -> None:
        self.running = False
        error = job.exception() if not job.cancelled() else asyncio.CancelledError()
        for k, (_, answer) in enumerate(batch):
            if answer.done():
                continue
            result = error or job.result()[k]
            if isinstance(result, BaseException):
                answer.set_exception(result)
            else:
                answer.set_result(result)
        self._start()
