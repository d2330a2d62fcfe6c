"""The local engine: one process, one model, files as the batching engine's streams, each file's
audio decoded by a small thread pool ahead of the model."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

from ..dims import SAMPLE_RATE
from ..options import TranscribeOptions
from .results import Finished, error_line
from .sources import BatchItem

# Files up to this long are decoded whole ahead of the model; longer ones stream window by window
# (a whole hour of samples is 230 MB).
PREFETCH_MAX_SECONDS = 1800.0


def short_file_samples(path: str):
    """The file's samples if it is short enough to hold whole, else None; raises what reading it
    raises."""
    from ..audio import audio_duration, load_audio

    return load_audio(path) if audio_duration(path) <= PREFETCH_MAX_SECONDS else None


def read_audio(path: str, n_mels: int):
    """The file's samples (short files) or a StreamedAudio (long ones)."""
    from ..audio_stream import StreamedAudio

    samples = short_file_samples(path)
    return samples if samples is not None else StreamedAudio(path, n_mels)


def prefetched(items: Iterable[BatchItem], n_mels: int, workers: int) -> Iterator[tuple]:
    """(item, its audio or the exception reading it raised), in order, read `workers` at a time
    and up to twice that many files ahead of the consumer."""
    pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="max-whisper-read")
    pending: deque = deque()
    upcoming = iter(items)

    def submit() -> None:
        item = next(upcoming, None)
        if item is not None:
            pending.append((item, pool.submit(_try_read, item.path, n_mels)))

    try:
        for _ in range(2 * max(1, workers)):
            submit()
        while pending:
            item, future = pending.popleft()
            submit()
            yield item, future.result()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _try_read(path: str, n_mels: int):
    try:
        return read_audio(path, n_mels)
    except Exception as exc:
        return exc


def for_model(model, options_for: Callable) -> Callable:
    """options_for, made right for the model (English-only: English, a warning once per set of
    options; see transcribe_command.english_only)."""
    from ..transcribe_command import english_only

    seen: dict[str, TranscribeOptions] = {}

    def options(key) -> TranscribeOptions:
        asked = options_for(key)
        text = repr(asked)
        if text not in seen:
            seen[text] = english_only(model, asked)
        return seen[text]

    return options


def transcribe_local(
    model,
    items: list[BatchItem],
    options_for: Callable[[BatchItem], TranscribeOptions],
    batch_size: int,
    prefetch: int = 2,
) -> Iterator[Finished]:
    """Each item's Finished, in the order they finish."""
    options_for = for_model(model, options_for)
    started: dict[int, float] = {}
    durations: dict[int, float] = {}

    def audios():
        for index, (item, audio) in enumerate(prefetched(items, model.dims.n_mels, prefetch)):
            started[index] = time.monotonic()
            if isinstance(audio, Exception):
                yield item.path  # its stream fails on it with the same error as `transcribe`
            else:
                durations[index] = len(audio) / SAMPLE_RATE
                yield audio

    for index, result in model.transcribe_many(
        audios(), batch_size=batch_size, options_for=lambda index: options_for(items[index])
    ):
        failed = isinstance(result, Exception)
        yield Finished(
            item=items[index],
            result=None if failed else result,
            error=error_line(result) if failed else None,
            duration=durations.get(index),
            seconds=time.monotonic() - started[index],
        )
