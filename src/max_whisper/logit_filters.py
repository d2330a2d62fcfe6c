"""Whisper's logit rules, applied in place to the last position's logits [batch, vocab] before a
token is chosen (openai-whisper's order and semantics), and the log-softmax they share."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .tokenizer import Tokenizer


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted, log_total = _shifted_and_log_total(logits)
    return shifted - log_total


def chosen_logprobs(logits: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """log_softmax(logits)[row, chosen[row]] of each row [batch, vocab], without the whole array:
    the same float32 operations, so the same values."""
    x = np.asarray(logits, dtype=np.float32)
    m = _row_max(x)
    exps = x - m  # one scratch array, exponentiated in place: only the row sums are needed
    log_total = np.log(np.sum(np.exp(exps, out=exps), axis=-1, keepdims=True))
    rows = np.arange(len(chosen))
    return (x[rows, chosen] - m[:, 0]) - log_total[:, 0]


def _shifted_and_log_total(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(x - max(x), log(sum(exp(x - max(x))))) along the last axis, in float32 (an all -inf row
    shifts by 0)."""
    x = np.asarray(logits, dtype=np.float32)
    shifted = x - _row_max(x)
    return shifted, np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))


def _row_max(x: np.ndarray) -> np.ndarray:
    """Each row's maximum [..., 1], 0 for a row without a finite one."""
    m = np.max(x, axis=-1, keepdims=True)
    return np.where(np.isfinite(m), m, np.float32(0))


def logsumexp(x: np.ndarray) -> float:
    m = np.max(x)
    if not np.isfinite(m):
        return float(m)
    return float(m + np.log(np.sum(np.exp(x - m))))


def _blank_and_eot(tokenizer: Tokenizer) -> np.ndarray:
    """The tokens that would end a text or leave it blank where more is due."""
    return np.array(tokenizer.encode(" ") + [tokenizer.eot], dtype=np.intp)


class SuppressBlank:
    """No blank or EOT as the first sampled token."""

    def __init__(self, tokenizer: Tokenizer, sample_begin: int):
        self.ids = _blank_and_eot(tokenizer)
        self.sample_begin = sample_begin

    def apply(self, logits: np.ndarray, tokens: np.ndarray) -> None:
        if tokens.shape[1] == self.sample_begin:
            logits[:, self.ids] = -np.inf


class HoldEnd:
    """A window's text does not end (EOT, or a blank) right after a segment that closes before the
    window's own limit (a timestamp index, None: no limit); one limit per window, `group` rows
    each. The rows follow the windows still in the batch (keep_windows)."""

    def __init__(
        self, tokenizer: Tokenizer, sample_begin: int, limits: Sequence[int | None], group: int
    ):
        self.ids = _blank_and_eot(tokenizer)
        self.ts_begin = tokenizer.timestamp_begin
        self.sample_begin, self.group = sample_begin, group
        self.limits = np.array([-1 if x is None else x for x in limits], dtype=np.int64)

    def keep_windows(self, windows: list[int]) -> None:
        self.limits = self.limits[windows]

    def apply(self, logits: np.ndarray, tokens: np.ndarray) -> None:
        if tokens.shape[1] - self.sample_begin < 2:
            return
        last_two = tokens[:, -2:]
        closed = (last_two >= self.ts_begin).all(axis=1)
        early = last_two[:, 1] - self.ts_begin < np.repeat(self.limits, self.group)
        held = np.nonzero(closed & early)[0]
        if held.size:
            logits[np.ix_(held, self.ids)] = -np.inf


class SuppressTokens:
    def __init__(self, suppress_tokens: Sequence[int]):
        self.ids = np.array(list(suppress_tokens), dtype=np.intp)

    def apply(self, logits: np.ndarray, tokens: np.ndarray) -> None:
        logits[:, self.ids] = -np.inf


class ApplyTimestampRules:
    """Timestamps come in pairs, never decrease, start the text, and win when their total
    probability beats every single text token."""

    def __init__(
        self, tokenizer: Tokenizer, sample_begin: int, max_initial_timestamp_index: int | None
    ):
        self.tokenizer = tokenizer
        self.sample_begin = sample_begin
        self.max_initial_timestamp_index = max_initial_timestamp_index

    def apply(self, logits: np.ndarray, tokens: np.ndarray) -> None:
        ts_begin, eot = self.tokenizer.timestamp_begin, self.tokenizer.eot
        logits[:, self.tokenizer.no_timestamps] = -np.inf

        for k in range(tokens.shape[0]):
            sampled = tokens[k, self.sample_begin :]
            last_was_timestamp = len(sampled) >= 1 and sampled[-1] >= ts_begin
            penultimate_was_timestamp = len(sampled) < 2 or sampled[-2] >= ts_begin
            if last_was_timestamp:
                if penultimate_was_timestamp:  # has to be a text token
                    logits[k, ts_begin:] = -np.inf
                else:  # cannot be a text token
                    logits[k, :eot] = -np.inf

            timestamps = sampled[sampled >= ts_begin]
            if timestamps.size > 0:
                # no decreasing timestamps; a segment must have nonzero length (no infinite loops)
                if last_was_timestamp and not penultimate_was_timestamp:
                    timestamp_last = timestamps[-1]
                else:
                    timestamp_last = timestamps[-1] + 1
                logits[k, ts_begin:timestamp_last] = -np.inf

        if tokens.shape[1] == self.sample_begin:
            logits[:, :ts_begin] = -np.inf  # the text must start with a timestamp
            if self.max_initial_timestamp_index is not None:
                logits[:, ts_begin + self.max_initial_timestamp_index + 1 :] = -np.inf

        # The timestamps' total log-probability against the likeliest text token's: both sides of
        # the log-softmax share its normaliser, so the logits themselves compare (one pass over the
        # vocabulary, not three).
        for k in range(tokens.shape[0]):
            if logsumexp(logits[k, ts_begin:]) > logits[k, :ts_begin].max():
                logits[k, :ts_begin] = -np.inf
