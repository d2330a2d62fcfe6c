"""Choosing the next token of each row: greedy or sampling (GreedyDecoder), beam search
(BeamSearchDecoder), and the final ranking of a window's candidates."""

from __future__ import annotations

import numpy as np

from .backends.base import DecoderSession
from .errors import DecodingError
from .logit_filters import chosen_logprobs, log_softmax


class GreedyDecoder:
    """Greedy or sampling. Each window samples from its own generator (`rngs`, one per window of
    `group` rows), so a window draws the same tokens whatever else shares its batch."""

    def __init__(
        self, temperature: float, eot: int, rngs: list[np.random.Generator], group: int = 1
    ):
        self.temperature, self.eot, self.rngs, self.group = temperature, eot, rngs, group

    def reset(self) -> None:
        pass

    def keep_windows(self, windows: list[int]) -> None:
        """Go on with only these windows (the others have left the batch)."""
        self.rngs = [self.rngs[k] for k in windows]

    def update(self, tokens, logits, sum_logprobs):
        if self.temperature == 0:
            next_tokens = logits.argmax(axis=-1)
        else:
            next_tokens = np.concatenate(
                [
                    _sample(rows, rng)
                    for rows, rng in zip(
                        np.split(logits / self.temperature, len(self.rngs)), self.rngs
                    )
                ]
            )
        current = chosen_logprobs(logits, next_tokens)
        finished = tokens[:, -1] == self.eot
        sum_logprobs += np.where(finished, 0.0, current)
        next_tokens[finished] = self.eot
        tokens = np.concatenate([tokens, next_tokens[:, None]], axis=-1)
        return tokens, bool((tokens[:, -1] == self.eot).all())

    def windows_done(self, tokens) -> np.ndarray:
        return (tokens[:, -1] == self.eot).reshape(-1, self.group).all(axis=1)

    def snapshot(self, window: int, tokens, sum_logprobs):
        rows = slice(window * self.group, (window + 1) * self.group)
        return tokens[rows].copy(), sum_logprobs[rows].copy()

    def finalize_window(self, snapshot):
        """One window's candidates (each ending with EOT) and their log-probabilities, from the
        snapshot of its rows taken when it ended (or was frozen at its length limit)."""
        rows, logprobs = snapshot
        rows = np.pad(rows, ((0, 0), (0, 1)), constant_values=self.eot)
        return list(rows), logprobs.tolist()


def _sample(logits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    probs = np.exp(log_softmax(logits).astype(np.float64))
    probs /= probs.sum(axis=-1, keepdims=True)
    return np.array([rng.choice(len(p), p=p) for p in probs], dtype=np.int64)


class BeamSearchDecoder:
    def __init__(
        self, beam_size: int, eot: int, session: DecoderSession, patience: float | None = None
    ):
        self.beam_size, self.eot, self.session = beam_size, eot, session
        self.patience = patience or 1.0
        self.max_candidates = round(beam_size * self.patience)
        if self.max_candidates <= 0:
            raise DecodingError(f"invalid beam size ({beam_size}) or patience ({patience})")
        self.finished_sequences: list[dict] | None = None

    def reset(self) -> None:
        self.finished_sequences = None

    def keep_windows(self, windows: list[int]) -> None:
        """Go on with only these windows (the others have left the batch)."""
        if self.finished_sequences is not None:
            self.finished_sequences = [self.finished_sequences[k] for k in windows]

    def update(self, tokens, logits, sum_logprobs):
        n_audio = tokens.shape[0] // self.beam_size
        if self.finished_sequences is None:
            self.finished_sequences = [{} for _ in range(n_audio)]
        logprobs = log_softmax(logits)
        best = top_k(logprobs, self.beam_size + 1)
        next_tokens, source_indices, finished_sequences = [], [], []
        for i in range(n_audio):
            scores, sources, finished = {}, {}, {}
            # candidates: each beam extended by its beam_size + 1 best tokens
            for j in range(self.beam_size):
                idx = i * self.beam_size + j
                prefix = tokens[idx].tolist()
                for token in best[idx]:
                    sequence = tuple(prefix + [int(token)])
                    scores[sequence] = float(np.float32(sum_logprobs[idx]) + logprobs[idx, token])
                    sources[sequence] = idx
            # keep the best beam_size unfinished ones; set the finished ones aside
            saved = 0
            for sequence in sorted(scores, key=scores.get, reverse=True):
                if sequence[-1] == self.eot:
                    finished[sequence] = scores[sequence]
                else:
                    sum_logprobs[len(next_tokens)] = scores[sequence]
                    next_tokens.append(sequence)
                    source_indices.append(sources[sequence])
                    saved += 1
                    if saved == self.beam_size:
                        break
            finished_sequences.append(finished)

        tokens = np.array(next_tokens, dtype=np.int64)
        if source_indices != list(range(len(source_indices))):
            self.session.rearrange(source_indices)
        for previously, newly in zip(self.finished_sequences, finished_sequences):
            for seq in sorted(newly, key=newly.get, reverse=True):
                if len(previously) >= self.max_candidates:
                    break
                previously[seq] = newly[seq]
        completed = all(len(s) >= self.max_candidates for s in self.finished_sequences)
        return tokens, completed

    def windows_done(self, tokens) -> np.ndarray:
        return np.array([len(s) >= self.max_candidates for s in self.finished_sequences])

    def snapshot(self, window: int, tokens, sum_logprobs):
        rows = slice(window * self.beam_size, (window + 1) * self.beam_size)
        return tokens[rows].copy(), sum_logprobs[rows].copy(), dict(self.finished_sequences[window])

    def finalize_window(self, snapshot):
        rows, logprobs, sequences = snapshot
        if len(sequences) < self.beam_size:  # not enough finished: add the best unfinished
            for j in np.argsort(logprobs)[::-1]:
                sequences[tuple(rows[j].tolist() + [self.eot])] = float(logprobs[j])
                if len(sequences) >= self.beam_size:
                    break
        return [np.array(seq) for seq in sequences], list(sequences.values())


TOP_K_BLOCK = 64


def top_k(logprobs: np.ndarray, k: int) -> np.ndarray:
    """Indices [rows, k] of each row's k largest values, largest first (ties: lowest index first,
    as torch.topk). At least k values reach the k-th largest of a row's block maxima (blocks of
    TOP_K_BLOCK values), so only the few values at or above it are sorted: a partition of the
    whole vocabulary costs several times more."""
    rows, n = logprobs.shape
    whole = n - n % TOP_K_BLOCK
    maxima = logprobs[:, :whole].reshape(rows, -1, TOP_K_BLOCK).max(axis=2)
    if whole < n:
        maxima = np.concatenate([maxima, logprobs[:, whole:].max(axis=1, keepdims=True)], axis=1)
    if maxima.shape[1] <= k:
        bounds = np.full(rows, -np.inf, logprobs.dtype)
    else:
        bounds = np.partition(maxima, -k, axis=1)[:, -k]
    best = np.empty((rows, k), np.int64)
    for r in range(rows):
        candidates = np.flatnonzero(logprobs[r] >= bounds[r])
        best[r] = candidates[np.lexsort((candidates, -logprobs[r, candidates]))][:k]
    return best


def rank_by_likelihood(tokens, sum_logprobs, length_penalty: float | None) -> list[int]:
    """Best candidate per audio: logprob / length, or the Google NMT length penalty."""

    def score(logprob, length):
        penalty = length if length_penalty is None else ((5 + length) / 6) ** length_penalty
        return logprob / penalty

    return [
        int(np.argmax([score(lp, len(t)) for lp, t in zip(lps, ts)]))
        for ts, lps in zip(tokens, sum_logprobs)
    ]
