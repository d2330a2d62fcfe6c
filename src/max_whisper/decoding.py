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
from .errors import DecodingError
from .logit_filters import (
    ApplyTimestampRules,
    HoldEnd,
    SuppressBlank,
    SuppressTokens,
    log_softmax,
)
from .token_selection import BeamSearchDecoder, GreedyDecoder, rank_by_likelihood
from .tokenizer import Tokenizer


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
    # the text may not end right after a segment that closes before this time (s): for a window
    # whose speech goes on to about there (the decoder may leave its last sentences for a next
    # window, which a chunk of speech does not have)
    end_not_before: float | None = None


PER_WINDOW = ("prompt", "end_not_before")  # what the windows of one batch may differ in


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

    def _logit_filters(self, sample_begin: int, ends: Sequence[float | None]) -> list:
        options, filters = self.options, []
        precision = CHUNK_LENGTH / self.backend.dims.n_audio_ctx  # 0.02 s
        if options.suppress_blank:
            filters.append(SuppressBlank(self.tokenizer, sample_begin))
        if any(end is not None for end in ends) and not options.without_timestamps:
            limits = [None if end is None else round(end / precision) for end in ends]
            filters.append(HoldEnd(self.tokenizer, sample_begin, limits, self.n_group))
        if options.suppress_tokens:
            filters.append(SuppressTokens(self._suppress_tokens()))
        if not options.without_timestamps:
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
        windows: Sequence[DecodingOptions] | None = None,
    ) -> list[DecodingResult]:
        """audio_features: [n_audio, n_audio_ctx, d] from backend.encode; windows: each window's
        own options, which differ from the task's only in the PER_WINDOW fields (default: the
        task's for all)."""
        tokenizer = self.tokenizer
        n_audio = audio_features.shape[0]
        windows = [self.options] * n_audio if windows is None else list(windows)
        prompts = [w.prompt for w in windows]
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
            session,
            decoder,
            tokens,
            pad,
            sot_index,
            self._logit_filters(sample_begin, [w.end_not_before for w in windows]),
            on_step,
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
        (MAX's sessions), windows that have ended leave the batch."""
        n_batch, group = tokens.shape[0], self.n_group
        sum_logprobs = np.zeros(n_batch, dtype=np.float32)
        no_speech_probs = [np.nan] * n_batch
        snapshots: dict[int, tuple] = {}
        alive = list(range(len(pad)))  # the windows still in the batch, by their index in the task
        compact = hasattr(session, "keep_windows")
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
                decoder.keep_windows(keep)
                for logit_filter in logit_filters:
                    if hasattr(logit_filter, "keep_windows"):
                        logit_filter.keep_windows(keep)
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
    windows: Sequence[DecodingOptions] | None = None,
    **overrides,
) -> list[DecodingResult]:
    """Decode each 30-s window of `audio_features` ([n_audio, n_audio_ctx, d]).

    windows: each window's own options, which may differ from `options` only in the PER_WINDOW
    fields (the previous-text prompt, ...; default: `options` for every window).
    on_step(tokens, windows) sees the token rows [rows, T] after each step and the windows (indices
    into `audio_features`) they belong to, `rows // len(windows)` each (for progress within a
    window)."""
    if overrides:
        options = replace(options, **overrides)
    return DecodingTask(backend, tokenizer, options).run(audio_features, on_step, windows)
