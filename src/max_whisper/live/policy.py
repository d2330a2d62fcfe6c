"""The live policy: which audio to decode when, and which words are final.

The buffer of the current utterance is re-decoded whenever `min_chunk_s` of new audio has come in.
A word is committed (final) once two consecutive hypotheses agree on it (LocalAgreement-2, as
whisper_streaming does); an utterance's first words once three do (the first decodes, on a second
or two of audio, often drop or change its opening word). The buffer is trimmed at the end of a
committed segment that ends a sentence (or, past `trim_s`, at any committed segment end), so that
decodes stay short; committed text before the buffer is the next decodes' prompt. Voice activity
(Silero VAD, its probabilities independent of how the audio came in) ends an utterance when the
speech is followed by `end_silence_s` of silence: the rest of the buffer is decoded once more, all
of it committed, and the utterance completed. Silence between utterances is dropped but for
`pre_roll_s` before the next onset. No model here: the caller decodes each `Request` (see
decoder.LiveDecoder) and hands the result to `apply`.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..dims import SAMPLE_RATE
from ..vad import FRAME

SENTENCE_END = re.compile(r"[.?!。？！]['\"”)\]]*$")
PROMPT_CHARS = 200  # committed text given as the prompt (whisper_streaming's choice)


@dataclass
class Request:
    """Decode `audio` (the buffer, 16 kHz float32) after the text `prompt`."""

    audio: np.ndarray
    prompt: str
    final: bool  # the utterance ends with this audio: commit all of it


@dataclass
class Update:
    """Words newly final in utterance `item` (`delta`, with its leading space) and the words not
    yet agreed on (`pending`, which later updates may change)."""

    item: int
    delta: str
    pending: str


@dataclass
class Completed:
    item: int
    text: str


Event = Update | Completed


def words_of(text: str) -> list[str]:
    return text.split()


def _key(word: str) -> str:
    return re.sub(r"[^\w']", "", word.lower())


def agreed_prefix(previous: list[str], current: list[str]) -> int:
    """How many leading words two hypotheses share (case and punctuation aside)."""
    n = 0
    while n < min(len(previous), len(current)) and _key(previous[n]) == _key(current[n]):
        n += 1
    return n


def after_committed(hypothesis: list[str], committed: list[str]) -> int:
    """Where the words not yet committed start in `hypothesis`, a decode of audio that also holds
    the `committed` words: after the last of them it repeats (usually all of them, in order)."""
    if not committed:
        return 0
    a, b = [_key(w) for w in committed], [_key(w) for w in hypothesis]
    if b[: len(a)] == a:
        return len(a)
    end = 0
    for i, j, size in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_matching_blocks():
        if size and i < len(a):
            end = j + min(size, len(a) - i)
    return end


@dataclass
class VoiceActivity:
    """Speech probabilities of the stream's frames (Silero VAD), for utterance ends.
    `probabilities` is given the frames in order, each once (vad.SpeechStream)."""

    probabilities: Callable[[np.ndarray], np.ndarray]
    threshold: float = 0.5
    probs: list[float] = field(default_factory=list)  # one per frame since the stream began
    judged: int = 0  # samples judged so far (whole frames)

    def update(self, stream: np.ndarray, stream_start: int) -> None:
        """Judge the whole frames of `stream` (samples from `stream_start` on) not judged yet."""
        if self.judged < stream_start:  # trimmed past the last frame judged: skip to it
            skipped = -(-(stream_start - self.judged) // FRAME)
            self.probs += [0.0] * skipped
            self.judged += skipped * FRAME
        offset = self.judged - stream_start
        n = (len(stream) - offset) // FRAME * FRAME
        if n > 0:
            self.probs.extend(self.probabilities(stream[offset : offset + n]).tolist())
            self.judged += n

    def speech_end(self, start: int, min_silence: int) -> int | None:
        """The sample where the first speech after `start` that `min_silence` samples of silence
        follow ended; None while speech goes on (or there was none)."""
        first, last_speech = start // FRAME, None
        for i, p in enumerate(self.probs[first:]):
            if p >= self.threshold:
                last_speech = i
            elif last_speech is not None and (i - last_speech) * FRAME >= min_silence:
                return (first + last_speech + 1) * FRAME
        return None

    def speech_start(self, start: int) -> int | None:
        """The first sample of speech after `start`, or None."""
        first = start // FRAME
        return next(
            ((first + i) * FRAME for i, p in enumerate(self.probs[first:]) if p >= self.threshold),
            None,
        )


class LiveTranscript:
    """The policy for one live stream: `append` audio, take `next_request`, `apply` its result."""

    def __init__(
        self,
        vad: VoiceActivity | None = None,
        *,
        min_chunk_s: float = 1.0,
        trim_s: float = 12.0,
        max_buffer_s: float = 25.0,
        end_silence_s: float = 0.6,
        end_pad_s: float = 0.2,
        pre_roll_s: float = 0.3,
    ):
        self.vad = vad
        self.min_chunk = int(min_chunk_s * SAMPLE_RATE)
        self.trim_at = trim_s
        self.max_buffer = int(max_buffer_s * SAMPLE_RATE)
        self.end_silence, self.end_pad, self.pre_roll = (
            int(s * SAMPLE_RATE) for s in (end_silence_s, end_pad_s, pre_roll_s)
        )
        self.buffer = np.zeros(0, np.float32)
        self.start = 0  # stream sample where the buffer starts
        self.decoded_to = 0  # buffer length at the last decode
        self.context = ""  # committed text before the buffer
        self.item = 0
        self.committed: list[str] = []  # this utterance's final words
        self.in_buffer = 0  # how many of them the buffer's audio holds
        self.pending: list[str] = []  # the last hypothesis after the committed words
        self.opening: list[str] = []  # the one before it, while nothing is committed
        self.closing = False  # the client committed the buffer: finish the utterance

    def append(self, samples: np.ndarray) -> None:
        self.buffer = np.concatenate([self.buffer, np.asarray(samples, np.float32)])

    def commit(self) -> None:
        """End the utterance now (the client's input_audio_buffer.commit)."""
        self.closing = True

    def clear(self) -> None:
        """Forget the audio not yet final (the client's input_audio_buffer.clear)."""
        self._drop(len(self.buffer))
        self.pending, self.opening, self.in_buffer = [], [], 0

    def next_request(self) -> Request | None:
        """What to decode now, or None (too little new audio, or no speech yet)."""
        if self.vad is not None:
            self.vad.update(self.buffer, self.start)
            onset = self.vad.speech_start(self.start)
            if onset is None:  # silence: keep only what may precede speech
                self._drop(max(0, len(self.buffer) - self.pre_roll))
                self.closing = False
                return None
            if self.decoded_to == 0 and not self.committed:  # an utterance begins: from its onset
                self._drop(onset - self.start - self.pre_roll)
            end = self.vad.speech_end(self.start, self.end_silence)
            if end is not None:
                cut = min(end - self.start + self.end_pad, len(self.buffer))
                return Request(self.buffer[:cut], self._prompt(), final=True)
        if self.closing or len(self.buffer) >= self.max_buffer:
            return Request(self.buffer, self._prompt(), final=True) if len(self.buffer) else None
        if len(self.buffer) - self.decoded_to < self.min_chunk:
            return None
        self.decoded_to = len(self.buffer)
        return Request(self.buffer, self._prompt(), final=False)

    def apply(self, request: Request, result: dict) -> list[Event]:
        """Take a decode of `request` ({"segments": [{"text", "end"}...]}): the events it brings."""
        segments = result["segments"]
        hypothesis = [w for s in segments for w in words_of(s["text"])]
        known = self.committed[len(self.committed) - self.in_buffer :]
        start = after_committed(hypothesis, known)
        fresh = hypothesis[start:]
        if request.final:
            return self._complete(fresh, len(request.audio))
        n = agreed_prefix(self.pending, fresh)
        if not self.committed:
            n = min(n, agreed_prefix(self.opening, fresh))
            self.opening = self.pending
        newly, self.pending = fresh[:n], fresh[n:]
        events = [self._update(newly)]
        self.in_buffer += n
        if start == len(known):  # the buffer's committed words are where they were: may trim
            self._trim(segments, self.in_buffer)
        return events

    def _update(self, newly: list[str]) -> Update:
        delta = " ".join(newly)
        if delta and self.committed:
            delta = " " + delta
        self.committed += newly
        return Update(self.item, delta, " ".join(self.pending))

    def _complete(self, rest: list[str], used: int) -> list[Event]:
        self.pending, self.opening = [], []
        events: list[Event] = [self._update(rest)] if rest else []
        text = " ".join(self.committed)
        if text:
            events.append(Completed(self.item, text))
            self.item += 1
        self._remember(self.committed[len(self.committed) - self.in_buffer :])
        self.committed, self.in_buffer = [], 0
        self._drop(used)
        self.closing = self.closing and len(self.buffer) > 0  # a commit covers what came after
        return events

    def _trim(self, segments: list[dict], committed: int) -> None:
        """Cut the buffer after the last committed segment that ends a sentence (past trim_s: that
        ends at all)."""
        long = len(self.buffer) / SAMPLE_RATE > self.trim_at
        count, cut = 0, None
        for segment in segments[:-1]:  # the last one may still grow
            count += len(words_of(segment["text"]))
            if count > committed:
                break
            if long or SENTENCE_END.search(segment["text"].strip()):
                cut = (count, float(segment["end"]))
        if cut is None:
            return
        count, seconds = cut
        self._remember(self.committed[len(self.committed) - self.in_buffer :][:count])
        self.in_buffer -= count
        self._drop(int(seconds * SAMPLE_RATE))

    def _drop(self, n: int) -> None:
        n = max(0, min(n, len(self.buffer)))
        self.buffer, self.start = self.buffer[n:], self.start + n
        self.decoded_to = max(0, self.decoded_to - n)

    def _remember(self, words: list[str]) -> None:
        """Committed words whose audio leaves the buffer become the prompt."""
        self.context = " ".join([self.context, *words]).strip()[-PROMPT_CHARS:]

    def _prompt(self) -> str:
        return self.context
