"""One batching engine shared by every request of a server: streams submitted from any thread join
the running batch (continuous batching).

    service = EngineService(model, batch_size=8)
    future = service.submit(samples, options, on_segment=None)   # from any thread
    result = future.result()     # {"text", "segments", "language"}, as model.transcribe gives it
    future.cancel()              # the client went away: the stream leaves the batch
    service.close()

One thread owns the model: it runs a BatchingEngine whose source is the queue of submissions. While
streams are in flight it takes whatever is queued without waiting (a new stream joins at the next
round); with none in flight it sleeps until the next submission. The future stays pending until the
stream ends, so `cancel()` works at any time: a waiting stream is never started, a running one is
dropped the next time the engine hands it an answer (at most one window later).

on_segment(segment) is called on the engine's thread as each segment is decoded (an asyncio caller
hands it to its loop with `loop.call_soon_threadsafe`); an exception it raises ends that stream.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError

import numpy as np

from .engine import DEFAULT_BATCH_SIZE, BatchingEngine, Stream
from .options import TranscribeOptions
from .transcribe import transcription_stream


class _Job:
    def __init__(self, audio, options: TranscribeOptions, on_segment):
        self.audio, self.options, self.on_segment = audio, options, on_segment
        self.future: Future = Future()

    def finish(self, result) -> None:
        try:
            if isinstance(result, BaseException):
                self.future.set_exception(result)
            else:
                self.future.set_result(result)
        except InvalidStateError:  # cancelled meanwhile: nobody wants it
            pass


_CLOSE = object()  # queued by close(): the source ends
_CANCELLED = object()  # what a cancelled stream returns


class EngineService:
    """A thread running `model`'s batching engine over streams submitted from any thread."""

    def __init__(self, model, batch_size: int = DEFAULT_BATCH_SIZE):
        self.model = model
        self.engine = BatchingEngine(model.backend, model.tokenizer, batch_size)
        self.batch_size = batch_size
        self.completed = 0  # streams that ran to their end (a result or their own error)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()  # for what other threads change: the jobs, the counts
        self._jobs: set[_Job] = set()  # submitted, not ended
        self._submitted = self._taken = 0
        self._running: set[_Job] = set()
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name="max-whisper-engine", daemon=True)
        self._thread.start()

    def submit(
        self,
        audio: np.ndarray | str | os.PathLike,
        options: TranscribeOptions | None = None,
        on_segment: Callable[[dict], None] | None = None,
    ) -> Future:
        """Queue one recording (16 kHz samples or a path; decoding a file is then done on the
        engine's thread) for transcription under `options`; its Future gives the result."""
        job = _Job(audio, options or TranscribeOptions(), on_segment)
        with self._lock:
            if self._closed:
                raise RuntimeError("the engine service is closed")
            self._jobs.add(job)
            self._submitted += 1
        self._queue.put(job)
        return job.future

    def stats(self) -> dict:
        """running: streams in the batch; waiting: submitted, not started yet (cancelled ones
        included until the engine skips them); largest_batch: the most windows decoded at once."""
        return {
            "batch_size": self.batch_size,
            "running": len(self._running),
            "waiting": max(0, self._submitted - self._taken),
            "largest_batch": self.engine.largest_batch,
            "completed": self.completed,
        }

    def close(self, timeout: float | None = None) -> bool:
        """Cancel every waiting and running stream and stop the thread (a running batch ends its
        round first): whether it has stopped within `timeout`."""
        with self._lock:
            self._closed = True
            for job in self._jobs:
                job.future.cancel()
        self._queue.put(_CLOSE)
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # -- on the engine's thread -------------------------------------------------------------------
    def _serve(self) -> None:
        while not self._closed:
            try:
                for _, (job, result) in self.engine.run(self._source()):
                    self._end(job)
                    if result is not _CANCELLED:
                        self.completed += 1
                        job.finish(result)
            except Exception as exc:  # the batch itself failed (the backend): fail its streams
                for job in self._running.copy():
                    self._end(job)
                    job.finish(exc)

    def _end(self, job: _Job) -> None:
        self._running.discard(job)
        with self._lock:
            self._jobs.discard(job)

    def _source(self):
        """The engine's streams: what is queued now; with nothing in flight, the next submission."""
        while True:
            try:
                job = self._queue.get(block=not self._running)
            except queue.Empty:
                yield None
                continue
            if job is _CLOSE:
                return
            with self._lock:
                self._taken += 1
            if job.future.cancelled():  # before its turn (close() cancels every job)
                self._end(job)
                continue
            self._running.add(job)
            yield self._tracked(job)

    def _tracked(self, job: _Job) -> Stream:
        """The job's stream, returning (job, its result or exception), dropped once cancelled."""
        stream = transcription_stream(self.model, job.audio, job.options, on_segment=job.on_segment)
        try:
            request = next(stream)
            while not job.future.cancelled():
                request = stream.send((yield request))
            stream.close()
            return job, _CANCELLED
        except StopIteration as done:
            return job, done.value
        except Exception as exc:  # this stream's own failure: the others go on
            return job, exc
