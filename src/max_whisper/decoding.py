"""Decoding of one 30-s window: greedy, sampling and beam search under Whisper's logit rules.

Backend-agnostic: the model is reached only through `Backend.decoder_session(...).logits(tokens)`.
The rules (and their order) follow openai-whisper's decoding so that tokens match the reference.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from .backends.base import Backend, DecoderSession
from .dims import CHUNK_LENGTH
from .errors import MaxWhisperError
from .tokenizer import Tokenizer


class DecodingError(MaxWhisperError, ValueError):
    pass


@dataclass(frozen=True)
class DecodingOptions:
    task: str = "transcribe"  # or "translate"
    language: str | None = None  # None: detect (multilingual models)
    temperature: float = 0.0
    sample_len: int | None = None  # most tokens to sample; default n_text_ctx // 2
    best_of: int | None = None  # independent samples when temperature > 0
    beam_size: int | None = None  # beam search when temperature == 0
    patience: float | None = None  # beam search patience (arxiv:2204.05424)
    length_penalty: float | None = None  # None: rank by logprob / length; else Google NMT's alpha
    prompt: str | list[int] | None = None  # previous context (after <|startofprev|>)
    prefix: str | list[int] | None = None  # forced start of the current context
    suppress_tokens: str | Iterable[int] | None = "-1"  # "-1": the non-speech symbol set
    suppress_blank: bool = True
    without_timestamps: bool = False
    max_initial_timestamp: float | None = 1.0


@dataclass
class DecodingResult:
    language: str | None
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    avg_logprob: float = np.nan
    no_speech_prob: float = np.nan
    temperature: float = np.nan
    compression_ratio: float = np.nan
    language_probs: dict[str, float] | None = None


def compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data))


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float32)
    m = np.max(x, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    shifted = x - m
    return shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))


def logsumexp(x: np.ndarray) -> float:
    m = np.max(x)
    if not np.isfinite(m):
        return float(m)
    return float(m + np.log(np.sum(np.exp(x - m))))


# -- logit filters (applied in place to the last position's logits [batch, vocab]) --------------
class SuppressBlank:
    """No blank or EOT as the first sampled token."""

    def __init__(self, tokenizer: Tokenizer, sample_begin: int):
        self.ids = tokenizer.encode(" ") + [tokenizer.eot]
        self.sample_begin = sample_begin

    def apply(self, logits: np.ndarray, tokens: np.ndarray) -> None:
        if tokens.shape[1] == self.sample_begin:
            logits[:, self.ids] = -np.inf


class SuppressTokens:
    def __init__(self, suppress_tokens: Sequence[int]):
        self.ids = list(suppress_tokens)

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

        logprobs = log_softmax(logits)
        for k in range(tokens.shape[0]):
            timestamp_logprob = logsumexp(logprobs[k, ts_begin:])
            max_text_token_logprob = logprobs[k, :ts_begin].max()
            if timestamp_logprob > max_text_token_logprob:
                logits[k, :ts_begin] = -np.inf


# -- token selection ----------------------------------------------------------------------------
class GreedyDecoder:
    """Greedy or sampling. Each window samples from its own generator (`rngs`, one per window of
    `group` rows), so a window draws the same tokens whatever else shares its batch."""

    def __init__(
        self, temperature: float, eot: int, rngs: list[np.random.Generator], group: int = 1
    ):
        self.temperature, self.eot, self.rngs, self.group = temperature, eot, rngs, group

    def reset(self) -> None:
        pass

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
        logprobs = log_softmax(logits)
        current = logprobs[np.arange(len(next_tokens)), next_tokens]
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

    def update(self, tokens, logits, sum_logprobs):
        n_audio = tokens.shape[0] // self.beam_size
        if self.finished_sequences is None:
            self.finished_sequences = [{} for _ in range(n_audio)]
        logprobs = log_softmax(logits)
        next_tokens, source_indices, finished_sequences = [], [], []
        for i in range(n_audio):
            scores, sources, finished = {}, {}, {}
            # candidates: each beam extended by its beam_size + 1 best tokens
            for j in range(self.beam_size):
                idx = i * self.beam_size + j
                prefix = tokens[idx].tolist()
                top = _topk(logprobs[idx], self.beam_size + 1)
                for token in top:
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


def _topk(logprobs: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest values, largest first (ties: lowest index first, as torch.topk)."""
    part = np.argpartition(-logprobs, k)[:k]
    return part[np.lexsort((part, -logprobs[part]))]


def rank_by_likelihood(tokens, sum_logprobs, length_penalty: float | None) -> list[int]:
    """Best candidate per audio: logprob / length, or the Google NMT length penalty."""

    def score(logprob, length):
        penalty = length if length_penalty is None else ((5 + length) / 6) ** length_penalty
        return logprob / penalty

    return [
        int(np.argmax([score(lp, len(t)) for lp, t in zip(lps, ts)]))
        for ts, lps in zip(tokens, sum_logprobs)
    ]


# -- the task -----------------------------------------------------------------------------------
def detect_language(backend: Backend, tokenizer: Tokenizer, audio_features: np.ndarray):
    """Most probable language token per audio and the distribution over languages."""
    if not tokenizer.multilingual:
        raise DecodingError("this model is English-only: it cannot detect languages")
    session = backend.decoder_session(audio_features)
    n_audio = audio_features.shape[0]
    logits = session.logits(np.full((n_audio, 1), tokenizer.sot, dtype=np.int64))[:, 0].astype(
        np.float32
    )
    lang_tokens = np.array(tokenizer.all_language_tokens)
    mask = np.full(logits.shape[-1], True)
    mask[lang_tokens] = False
    logits[:, mask] = -np.inf
    best = logits.argmax(axis=-1)
    probs = np.exp(log_softmax(logits))
    language_probs = [
        {code: float(probs[i, t]) for t, code in zip(lang_tokens, tokenizer.all_language_codes)}
        for i in range(n_audio)
    ]
    return best, language_probs


class DecodingTask:
    """One decoding pass over a batch of windows that share their options except the prompt.

    Windows whose prompts differ in length are left-padded to the longest (on backends with
    `ragged_batches`), so every column index (the SOT, the first sampled token) is the same for
    all rows; each window's own length limit, random generator and end are kept, so a window gets
    the tokens it would get decoded alone.
    """

    def __init__(
        self, backend: Backend, tokenizer: Tokenizer, options: DecodingOptions, seed: int = 0
    ):
        self.backend = backend
        self.options = _verify_options(options)
        self.tokenizer = tokenizer.with_options(
            language=options.language or "en", task=options.task
        )
        dims = backend.dims
        self.n_group = options.beam_size or options.best_of or 1
        self.n_ctx = dims.n_text_ctx
        self.sample_len = options.sample_len or dims.n_text_ctx // 2
        self.sot_sequence = self.tokenizer.sot_sequence
        if options.without_timestamps:
            self.sot_sequence = self.tokenizer.sot_sequence_including_notimestamps
        self.seed = seed

    def _logit_filters(self, sample_begin: int) -> list:
        options, filters = self.options, []
        if options.suppress_blank:
            filters.append(SuppressBlank(self.tokenizer, sample_begin))
        if options.suppress_tokens:
            filters.append(SuppressTokens(self._suppress_tokens()))
        if not options.without_timestamps:
            precision = CHUNK_LENGTH / self.backend.dims.n_audio_ctx  # 0.02 s
            max_initial = None
            if options.max_initial_timestamp:
                max_initial = round(options.max_initial_timestamp / precision)
            filters.append(ApplyTimestampRules(self.tokenizer, sample_begin, max_initial))
        return filters

    def _initial_tokens(self, prompt) -> tuple[int, ...]:
        tokens = list(self.sot_sequence)
        if prefix := self.options.prefix:
            prefix_tokens = (
                self.tokenizer.encode(" " + prefix.strip())
                if isinstance(prefix, str)
                else list(prefix)
            )
            max_prefix_len = self.n_ctx // 2 - self.sample_len
            prefix_tokens = prefix_tokens[-max_prefix_len:]
            tokens += prefix_tokens
        if prompt:
            prompt_tokens = (
                self.tokenizer.encode(" " + prompt.strip())
                if isinstance(prompt, str)
                else list(prompt)
            )
            tokens = [self.tokenizer.sot_prev] + prompt_tokens[-(self.n_ctx // 2 - 1) :] + tokens
        return tuple(tokens)

    def _suppress_tokens(self) -> tuple[int, ...]:
        suppress = self.options.suppress_tokens
        if isinstance(suppress, str):
            suppress = [int(t) for t in suppress.split(",") if t.strip()]
        suppress = list(suppress or [])
        if -1 in suppress:
            suppress = [t for t in suppress if t >= 0] + list(self.tokenizer.non_speech_tokens)
        t = self.tokenizer
        suppress += [t.transcribe, t.translate, t.sot, t.sot_prev, t.sot_lm, t.no_speech]
        return tuple(sorted(set(suppress)))

    def run(
        self,
        audio_features: np.ndarray,
        on_step: Callable[[np.ndarray, list[int]], None] | None = None,
        prompts: Sequence | None = None,
    ) -> list[DecodingResult]:
        """audio_features: [n_audio, n_audio_ctx, d] from backend.encode; prompts: one per window
        (default: the options' prompt for all)."""
        tokenizer = self.tokenizer
        n_audio = audio_features.shape[0]
        prompts = [self.options.prompt] * n_audio if prompts is None else list(prompts)
        initial = [self._initial_tokens(p) for p in prompts]
        sample_begin = max(len(t) for t in initial)
        pad = np.array([sample_begin - len(t) for t in initial], np.int64)
        if pad.any() and not getattr(self.backend, "ragged_batches", False):
            raise DecodingError(
                f"the {self.backend.name} backend decodes a batch only when its prompts "
                "are equally long"
            )
        # the SOT's column, counted from the right end of the (left-padded) initial tokens
        sot_index = sample_begin - (len(initial[0]) - initial[0].index(tokenizer.sot))
        tokens = np.array(
            [[tokenizer.eot] * int(n) + list(t) for n, t in zip(pad, initial)], dtype=np.int64
        )

        languages = [self.options.language] * n_audio
        language_probs = None
        if self.options.language is None and tokenizer.multilingual:
            lang_tokens, language_probs = detect_language(self.backend, tokenizer, audio_features)
            languages = [max(p, key=p.get) for p in language_probs]
            tokens[:, sot_index + 1] = lang_tokens

        tokens = np.repeat(tokens, self.n_group, axis=0)
        session = (
            self.backend.decoder_session(audio_features, pad=pad.tolist())
            if pad.any()
            else self.backend.decoder_session(audio_features)
        )
        decoder = (
            BeamSearchDecoder(self.options.beam_size, tokenizer.eot, session, self.options.patience)
            if self.options.beam_size is not None
            else GreedyDecoder(
                self.options.temperature,
                tokenizer.eot,
                [np.random.default_rng(self.seed) for _ in range(n_audio)],
                self.n_group,
            )
        )
        final, no_speech_probs = self._main_loop(
            session, decoder, tokens, pad, sot_index, self._logit_filters(sample_begin), on_step
        )
        no_speech_probs = no_speech_probs[:: self.n_group]

        results = []
        for i in range(n_audio):
            candidates, logprobs = decoder.finalize_window(final[i])
            # keep what lies between the first sampled token and the first EOT
            candidates = [
                _until_eot(np.asarray(t)[sample_begin:], tokenizer.eot) for t in candidates
            ]
            best = rank_by_likelihood([candidates], [logprobs], self.options.length_penalty)[0]
            toks = [int(t) for t in candidates[best]]
            text = tokenizer.decode(toks).strip()
            results.append(
                DecodingResult(
                    language=languages[i],
                    language_probs=language_probs[i] if language_probs else None,
                    tokens=toks,
                    text=text,
                    avg_logprob=logprobs[best] / (len(toks) + 1),
                    no_speech_prob=no_speech_probs[i],
                    temperature=self.options.temperature,
                    compression_ratio=compression_ratio(text),
                )
            )
        return results

    def _main_loop(
        self,
        session: DecoderSession,
        decoder,
        tokens: np.ndarray,
        pad: np.ndarray,
        sot_index: int,
        logit_filters: list,
        on_step=None,
    ):
        """Decode until every window has ended, or reached its length limit (then it is frozen:
        its state at that step is what it would have been decoded alone). Where the session can
        (greedy and sampling), windows that have ended leave the batch."""
        n_batch, group = tokens.shape[0], self.n_group
        sum_logprobs = np.zeros(n_batch, dtype=np.float32)
        no_speech_probs = [np.nan] * n_batch
        snapshots: dict[int, tuple] = {}
        alive = list(range(len(pad)))  # the windows still in the batch, by their index in the task
        compact = isinstance(decoder, GreedyDecoder) and hasattr(session, "keep_windows")
        final: dict[
            int, tuple
        ] = {}  # windows that left the batch: their rows and log-probabilities
        for i in range(self.sample_len):
            # the first call feeds the prompt: logits only where they are read (SOT and the last)
            logits = session.logits(tokens, [sot_index, tokens.shape[1] - 1] if i == 0 else None)
            if i == 0:
                probs_at_sot = np.exp(log_softmax(logits[:, 0]))
                no_speech_probs = probs_at_sot[:, self.tokenizer.no_speech].tolist()
            logits = np.array(logits[:, -1], dtype=np.float32)  # a copy: the filters write into it
            for logit_filter in logit_filters:
                logit_filter.apply(logits, tokens)
            tokens, completed = decoder.update(tokens, logits, sum_logprobs)
            if on_step is not None:
                on_step(tokens, alive)
            if completed:
                break
            for k in np.nonzero(tokens.shape[-1] - pad[alive] > self.n_ctx)[0]:
                snapshots.setdefault(alive[k], decoder.snapshot(int(k), tokens, sum_logprobs))
            done = decoder.windows_done(tokens)
            if all(d or w in snapshots for w, d in zip(alive, done)):
                break
            leaving = [k for k, w in enumerate(alive) if done[k] or w in snapshots]
            if compact and leaving:
                for k in leaving:
                    final[alive[k]] = decoder.snapshot(k, tokens, sum_logprobs)
                keep = [k for k in range(len(alive)) if k not in leaving]
                rows = [k * group + g for k in keep for g in range(group)]
                session.keep_windows(keep)
                decoder.rngs = [decoder.rngs[k] for k in keep]
                tokens, sum_logprobs = tokens[rows], sum_logprobs[rows]
                alive = [alive[k] for k in keep]
        for k, w in enumerate(alive):
            final.setdefault(w, decoder.snapshot(k, tokens, sum_logprobs))
        for w, snapshot in snapshots.items():
            final[w] = snapshot  # frozen at its length limit: that state, whatever came after
        return final, no_speech_probs


def _until_eot(tokens: np.ndarray, eot: int) -> np.ndarray:
    return tokens[: int(np.nonzero(tokens == eot)[0][0])]


def _verify_options(options: DecodingOptions) -> DecodingOptions:
    if options.task not in ("transcribe", "translate"):
        raise DecodingError(f"unknown task '{options.task}' (transcribe or translate)")
    if options.beam_size is not None and options.best_of is not None:
        raise DecodingError("beam_size and best_of can't be given together")
    if options.beam_size is not None and options.beam_size < 1:
        raise DecodingError("beam_size must be at least 1")
    if options.temperature == 0 and options.best_of is not None:
        raise DecodingError("best_of with greedy decoding (temperature 0) is not compatible")
    if options.patience is not None and options.beam_size is None:
        raise DecodingError("patience requires beam_size")
    if options.length_penalty is not None and not 0 <= options.length_penalty <= 1:
        raise DecodingError("length_penalty must be between 0 and 1")
    return options


def decode(
    backend: Backend,
    tokenizer: Tokenizer,
    audio_features: np.ndarray,
    options: DecodingOptions = DecodingOptions(),
    on_step: Callable[[np.ndarray, list[int]], None] | None = None,
    prompts: Sequence | None = None,
    **overrides,
) -> list[DecodingResult]:
    """Decode each 30-s window of `audio_features` ([n_audio, n_audio_ctx, d]).

    prompts: each window's own previous-text prompt (default: `options.prompt` for every window).
    on_step(tokens, windows) sees the token rows [rows, T] after each step and the windows (indices
    into `audio_features`) they belong to, `rows // len(windows)` each (for progress within a
    window)."""
    if overrides:
        options = replace(options, **overrides)
    return DecodingTask(backend, tokenizer, options).run(audio_features, on_step, prompts)
