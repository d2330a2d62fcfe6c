"""Word-level timestamps from cross-attention, and the hallucination-skipping rules built on them.

Follows openai-whisper's timing.py step by step, in NumPy: the alignment heads' cross-attention over
the text tokens is normalised, median-filtered and averaged, then dynamic time warping pairs each
token with audio positions; word boundaries come from the tokenizer. Backend-agnostic: the model is
reached only through `backend.cross_attention(...)` and `backend.decoder_session(...).logits(...)`.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .backends.base import TranscriptionModel
from .dims import FRAMES_PER_SECOND, HOP_LENGTH, SAMPLE_RATE, TOKENS_PER_SECOND
from .tokenizer import Tokenizer

SENTENCE_END_MARKS = ".。!！?？"


@dataclass
class WordTiming:
    word: str
    tokens: list[int]
    start: float
    end: float
    probability: float


# -- signal helpers ------------------------------------------------------------------------------
def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def median_filter(x: np.ndarray, filter_width: int) -> np.ndarray:
    """Median over a sliding window of odd `filter_width` along the last axis, reflect-padded at
    the edges (the edge sample itself is not repeated). Inputs shorter than the half-width pass
    through unchanged, as in openai-whisper."""
    if filter_width <= 0 or filter_width % 2 != 1:
        raise ValueError("filter_width should be an odd positive number")
    pad = filter_width // 2
    if x.shape[-1] <= pad:
        return x
    padded = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(pad, pad)], mode="reflect")
    windows = np.lib.stride_tricks.sliding_window_view(padded, filter_width, axis=-1)
    return np.partition(windows, pad, axis=-1)[..., pad]  # NaN sorts last, as in torch.sort


def backtrace(trace: np.ndarray) -> np.ndarray:
    """The DTW path through `trace` (0: diagonal, 1: up, 2: left) as [2, path_length] indices."""
    trace = trace.copy()
    trace[0, :] = 2
    trace[:, 0] = 1
    i, j = trace.shape[0] - 1, trace.shape[1] - 1
    path = []
    while i > 0 or j > 0:
        path.append((i - 1, j - 1))
        step = trace[i, j]
        if step == 0:
            i, j = i - 1, j - 1
        elif step == 1:
            i -= 1
        elif step == 2:
            j -= 1
        else:
            raise ValueError(f"unexpected trace value {step} at ({i}, {j})")
    return np.array(path[::-1], dtype=np.int64).reshape(-1, 2).T


def dtw(x: np.ndarray) -> np.ndarray:
    """Dynamic time warping of cost matrix `x` [N, M] -> (text_indices, time_indices).

    The same recurrence and tie rules as openai-whisper's dtw_cpu (a strictly smaller diagonal wins,
    then a strictly smaller "up", else "left"; costs accumulate in float32), computed one
    anti-diagonal at a time so that each step is a vector operation.
    """
    x = np.asarray(x, dtype=np.float64)
    n, m = x.shape
    cost = np.full((n + 1, m + 1), np.inf, dtype=np.float32)
    trace = np.full((n + 1, m + 1), -1, dtype=np.int8)
    cost[0, 0] = 0
    for d in range(2, n + m + 1):  # cells with i + j == d depend only on diagonals d-1 and d-2
        i = np.arange(max(1, d - m), min(n, d - 1) + 1)
        j = d - i
        c0 = cost[i - 1, j - 1]
        c1 = cost[i - 1, j]
        c2 = cost[i, j - 1]
        pick0 = (c0 < c1) & (c0 < c2)
        pick1 = ~pick0 & (c1 < c0) & (c1 < c2)
        c = np.where(pick0, c0, np.where(pick1, c1, c2))
        cost[i, j] = x[i - 1, j - 1] + c  # float64 sum stored as float32, as in the reference
        trace[i, j] = np.where(pick0, 0, np.where(pick1, 1, 2))
    return backtrace(trace)


# -- alignment -----------------------------------------------------------------------------------
def find_alignment(
    model: TranscriptionModel,
    tokenizer: Tokenizer,
    text_tokens: list[int],
    features: np.ndarray,
    num_frames: int,
    *,
    medfilt_width: int = 7,
    qk_scale: float = 1.0,
) -> list[WordTiming]:
    """Align `text_tokens` to one window's encoder `features` ([1, n_audio_ctx, d]); `num_frames`
    is the number of mel frames of real audio in the window. Times are relative to the window."""
    if len(text_tokens) == 0:
        return []
    text_tokens = [int(t) for t in text_tokens]
    features = np.asarray(features, dtype=np.float32)
    if features.ndim == 2:
        features = features[None]
    n_sot = len(tokenizer.sot_sequence)
    tokens = np.array(
        [*tokenizer.sot_sequence, tokenizer.no_timestamps, *text_tokens, tokenizer.eot],
        dtype=np.int64,
    )

    # probability of each text token given the ones before it
    logits = model.backend.decoder_session(features).logits(tokens[None])[0]
    token_probs = softmax(logits[n_sot:, : tokenizer.eot])
    text_token_probs = token_probs[np.arange(len(text_tokens)), text_tokens].tolist()

    # alignment heads' cross-attention: heads x tokens x frames
    scores = np.asarray(model.backend.cross_attention(features, tokens), dtype=np.float32)
    heads = np.asarray(model.alignment_heads).reshape(-1, 2)
    weights = scores[heads[:, 0], heads[:, 1]][:, :, : num_frames // 2]
    weights = softmax(weights * np.float32(qk_scale))
    mean = weights.mean(axis=-2, keepdims=True)
    std = weights.std(axis=-2, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        weights = (weights - mean) / std
    weights = median_filter(weights, medfilt_width)

    matrix = weights.mean(axis=0)[n_sot:-1]
    text_indices, time_indices = dtw(-matrix)

    words, word_tokens = tokenizer.split_to_word_tokens(text_tokens + [tokenizer.eot])
    if len(word_tokens) <= 1:
        return []  # only the end-of-text token: nothing to time
    word_boundaries = np.pad(np.cumsum([len(t) for t in word_tokens[:-1]]), (1, 0))

    jumps = np.pad(np.diff(text_indices), (1, 0), constant_values=1).astype(bool)
    jump_times = time_indices[jumps] / TOKENS_PER_SECOND
    start_times = jump_times[word_boundaries[:-1]]
    end_times = jump_times[word_boundaries[1:]]
    word_probabilities = [
        float(np.mean(text_token_probs[i:j]))
        for i, j in zip(word_boundaries[:-1], word_boundaries[1:])
    ]
    return [
        WordTiming(word, list(toks), float(start), float(end), probability)
        for word, toks, start, end, probability in zip(
            words, word_tokens, start_times, end_times, word_probabilities
        )
    ]


def merge_punctuations(alignment: list[WordTiming], prepended: str, appended: str) -> None:
    """Attach opening punctuation to the following word and closing punctuation to the preceding one
    (in place; a merged-away entry keeps its timing with an empty word and no tokens)."""
    # prepended: scan right to left so that runs such as ' "(' all reach the word
    i, j = len(alignment) - 2, len(alignment) - 1
    while i >= 0:
        previous, following = alignment[i], alignment[j]
        if previous.word.startswith(" ") and previous.word.strip() in prepended:
            following.word = previous.word + following.word
            following.tokens = previous.tokens + following.tokens
            previous.word, previous.tokens = "", []
        else:
            j = i
        i -= 1

    # appended: scan left to right
    i, j = 0, 1
    while j < len(alignment):
        previous, following = alignment[i], alignment[j]
        if not previous.word.endswith(" ") and following.word in appended:
            previous.word = previous.word + following.word
            previous.tokens = previous.tokens + following.tokens
            following.word, following.tokens = "", []
        else:
            i = j
        j += 1


def add_word_timestamps(
    *,
    segments: list[dict],
    model: TranscriptionModel,
    tokenizer: Tokenizer,
    features: np.ndarray,
    num_frames: int,
    prepend_punctuations: str = "\"'“¿([{-",
    append_punctuations: str = "\"'.。,，!！?？:：”)]}、",
    last_speech_timestamp: float,
    **kwargs,
) -> None:
    """Give each segment of one window a "words" list of {word, start, end, probability}, and pull
    the segment's start/end to its words (in place). kwargs go to find_alignment."""
    if len(segments) == 0:
        return

    text_tokens_per_segment = [
        [t for t in segment["tokens"] if t < tokenizer.eot] for segment in segments
    ]
    text_tokens = list(itertools.chain.from_iterable(text_tokens_per_segment))
    alignment = find_alignment(model, tokenizer, text_tokens, features, num_frames, **kwargs)
    word_durations = np.array([t.end - t.start for t in alignment])
    word_durations = word_durations[word_durations.nonzero()]
    median_duration = float(np.median(word_durations)) if len(word_durations) > 0 else 0.0
    median_duration = min(0.7, median_duration)
    max_duration = median_duration * 2

    # words at sentence boundaries may be no longer than twice the median word duration
    if len(word_durations) > 0:
        for i in range(1, len(alignment)):
            if alignment[i].end - alignment[i].start > max_duration:
                if alignment[i].word in SENTENCE_END_MARKS:
                    alignment[i].end = alignment[i].start + max_duration
                elif alignment[i - 1].word in SENTENCE_END_MARKS:
                    alignment[i].start = alignment[i].end - max_duration

    merge_punctuations(alignment, prepend_punctuations, append_punctuations)

    time_offset = segments[0]["seek"] * HOP_LENGTH / SAMPLE_RATE
    word_index = 0
    for segment, seg_text_tokens in zip(segments, text_tokens_per_segment):
        saved_tokens = 0
        words = []
        while word_index < len(alignment) and saved_tokens < len(seg_text_tokens):
            timing = alignment[word_index]
            if timing.word:
                words.append(
                    {
                        "word": timing.word,
                        "start": round(time_offset + timing.start, 2),
                        "end": round(time_offset + timing.end, 2),
                        "probability": timing.probability,
                    }
                )
            saved_tokens += len(timing.tokens)
            word_index += 1

        if len(words) > 0:
            # after a pause, the first (and second) word may be no longer than twice the median
            if words[0]["end"] - last_speech_timestamp > median_duration * 4 and (
                words[0]["end"] - words[0]["start"] > max_duration
                or (len(words) > 1 and words[1]["end"] - words[0]["start"] > max_duration * 2)
            ):
                if len(words) > 1 and words[1]["end"] - words[1]["start"] > max_duration:
                    boundary = max(words[1]["end"] / 2, words[1]["end"] - max_duration)
                    words[0]["end"] = words[1]["start"] = boundary
                words[0]["start"] = max(0, words[0]["end"] - max_duration)

            # prefer the segment's start timestamp if the first word is too long
            if segment["start"] < words[0]["end"] and segment["start"] - 0.5 > words[0]["start"]:
                words[0]["start"] = max(0, min(words[0]["end"] - median_duration, segment["start"]))
            else:
                segment["start"] = words[0]["start"]

            # prefer the segment's end timestamp if the last word is too long
            if segment["end"] > words[-1]["start"] and segment["end"] + 0.5 < words[-1]["end"]:
                words[-1]["end"] = max(words[-1]["start"] + median_duration, segment["end"])
            else:
                segment["end"] = words[-1]["end"]

            last_speech_timestamp = segment["end"]

        segment["words"] = words


# -- segment helpers -----------------------------------------------------------------------------
def get_start(segments: Sequence[dict]) -> float | None:
    """Start of the first word, else of the first segment; None without segments."""
    return next(
        (w["start"] for s in segments for w in s.get("words") or ()),
        segments[0]["start"] if segments else None,
    )


def get_end(segments: Sequence[dict]) -> float | None:
    """End of the last word, else of the last segment; None without segments."""
    return next(
        (w["end"] for s in reversed(segments) for w in reversed(s.get("words") or ())),
        segments[-1]["end"] if segments else None,
    )


def word_anomaly_score(word: dict) -> float:
    """How implausible a word looks: improbable, very short or very long."""
    probability = word.get("probability", 0.0)
    duration = word["end"] - word["start"]
    score = 0.0
    if probability < 0.15:
        score += 1.0
    if duration < 0.133:
        score += (0.133 - duration) * 15
    if duration > 2.0:
        score += duration - 2.0
    return score


def is_segment_anomaly(segment: dict | None, punctuation: str) -> bool:
    if segment is None or not segment["words"]:
        return False
    words = [w for w in segment["words"] if w["word"] not in punctuation][:8]
    score = sum(word_anomaly_score(w) for w in words)
    return score >= 3 or score + 0.01 >= len(words)


def next_words_segment(segments: Sequence[dict]) -> dict | None:
    return next((s for s in segments if s["words"]), None)


def skip_hallucinations(
    current_segments: list[dict],
    *,
    threshold: float,
    single_timestamp_ending: bool,
    time_offset: float,
    window_end_time: float,
    segment_duration: float,
    previous_seek: int,
    segment_size: int,
    seek: int,
    last_speech_timestamp: float,
    content_duration: float,
    content_frames: int,
    punctuation: str,
) -> tuple[int, bool]:
    """openai-whisper's `hallucination_silence_threshold` rules for one window with word timings.

    Returns (seek, restart). restart=True: the window's first words look like a hallucination after
    a long silence; the caller must re-decode from the returned seek and keep none of these
    segments. Otherwise segments from a hallucination surrounded by silence onwards are removed
    from `current_segments` in place, and seek moves past it.
    """
    if not single_timestamp_ending:
        last_word_end = get_end(current_segments)
        if last_word_end is not None and last_word_end > time_offset:
            remaining_duration = window_end_time - last_word_end
            if remaining_duration > threshold:
                seek = round(last_word_end * FRAMES_PER_SECOND)
            else:
                seek = previous_seek + segment_size

    # a possible hallucination first: skip the leading silence and decode again
    first_segment = next_words_segment(current_segments)
    if first_segment is not None and is_segment_anomaly(first_segment, punctuation):
        gap = first_segment["start"] - time_offset
        if gap > threshold:
            return previous_seek + round(gap * FRAMES_PER_SECOND), True

    # drop a possible hallucination surrounded by silence or more hallucinations, and what follows
    hal_last_end = last_speech_timestamp
    for si, segment in enumerate(current_segments):
        if not segment["words"]:
            continue
        if is_segment_anomaly(segment, punctuation):
            next_segment = next_words_segment(current_segments[si + 1 :])
            hal_next_start = (
                next_segment["words"][0]["start"]
                if next_segment is not None
                else time_offset + segment_duration
            )
            silence_before = (
                segment["start"] - hal_last_end > threshold
                or segment["start"] < threshold
                or segment["start"] - time_offset < 2.0
            )
            silence_after = (
                hal_next_start - segment["end"] > threshold
                or is_segment_anomaly(next_segment, punctuation)
                or window_end_time - segment["end"] < 2.0
            )
            if silence_before and silence_after:
                seek = round(max(time_offset + 1, segment["start"]) * FRAMES_PER_SECOND)
                if content_duration - segment["end"] < threshold:
                    seek = content_frames
                del current_segments[si:]
                break
        hal_last_end = segment["end"]
    return seek, False
