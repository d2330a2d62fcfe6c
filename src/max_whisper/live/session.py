"""One live stream run synchronously (the CLI, tests): audio chunks in, policy events out."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

import numpy as np

from ..dims import SAMPLE_RATE
from .decoder import LiveDecoder
from .policy import Event, LiveTranscript, VoiceActivity


def voice_activity() -> VoiceActivity | None:
    """Silero VAD for utterance ends, or None where the vad extra is not installed."""
    from ..vad import SpeechStream, VadUnavailable

    try:
        return VoiceActivity(SpeechStream())
    except VadUnavailable:
        return None


def new_transcript(**policy) -> LiveTranscript:
    return LiveTranscript(voice_activity(), **policy)


def transcribe_live(
    chunks: Iterable[np.ndarray], decoder: LiveDecoder, transcript: LiveTranscript
) -> Iterator[Event]:
    """Feed each chunk, decode whatever the policy asks for, and finish the last utterance when
    the chunks end."""

    def drain() -> Iterator[Event]:
        while (request := transcript.next_request()) is not None:
            yield from transcript.apply(request, decoder.decode(request))

    for chunk in chunks:
        transcript.append(chunk)
        yield from drain()
    transcript.commit()
    yield from drain()


def paced(samples: np.ndarray, speed: float = 1.0, chunk_s: float = 0.1) -> Iterator[np.ndarray]:
    """`samples` as they would arrive from a live source `speed` times faster than real time (what
    arrived while the consumer was busy comes at once)."""
    start, sent = time.monotonic(), 0
    while sent < len(samples):
        due = min(len(samples), int((time.monotonic() - start) * speed * SAMPLE_RATE))
        if due - sent < chunk_s * SAMPLE_RATE and due < len(samples):
            time.sleep(chunk_s / speed)
            continue
        yield samples[sent:due]
        sent = due
