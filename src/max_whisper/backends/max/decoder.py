"""The MAX decoder at run time: the decoder module (decoder_graph) bound to one model's weights, and
decoding sessions whose KV cache stays in MAX buffers between steps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from max.driver import Buffer

from ...dims import ModelDimensions
from . import custom_ops, decoder_graph, layers, weight_layout
from .buffers import DeviceBuffers, kept_rows, to_numpy
from .compile_cache import compiled_graph, source_hash
from .device import MaxRuntime
from .kv_cache import CopiedCache, SlotCache, SlotPool

GRAPH_SOURCES = [
    *(Path(m.__file__) for m in (decoder_graph, layers, weight_layout)),
    *custom_ops.SOURCES,
]

# a cold compile, shown before it starts: on a 2-core CPU; for a GPU on its (16-core) host
DECODER_COMPILE_ESTIMATE_S = {"cpu": 160, "gpu": 210}


ROWS_GRAPH_MAX = 8  # calls of at most this many token rows go to the float16 few-rows graph


def decoder_signature(dims: ModelDimensions, half: bool = True, in_place: bool = True) -> dict:
    """What the compiled decoder module depends on besides MAX, device and CPU
    (never weight values)."""
    return {
        "graph": "decoder",
        "dtype": "float32",
        "float16 copies": half,
        "KV cache": "in place" if in_place else "copied",
        "code": source_hash(*GRAPH_SOURCES),
        **dims.to_dict(),
    }


def uses_half_weights(
    runtime: MaxRuntime, dims: ModelDimensions, params: dict[str, np.ndarray] | None = None
) -> bool:
    """Float16 copies of the decoder's weights through our CPU kernel, where they are exact: on a
    CPU, for weights that are float16 values (the bundled models; params=None: assume so, as
    warmup does)."""
    if runtime.label != "cpu":
        return False
    return params is None or weight_layout.float16_exact(dims, params)


def decoder_label(dims: ModelDimensions) -> str:
    return f"decoder ({dims.n_text_layer} x {dims.n_text_state} wide)"


def in_place_cache(runtime: MaxRuntime) -> bool:
    return decoder_graph.cache_in_place(runtime.device_ref)


def compiled_decoder(runtime: MaxRuntime, dims: ModelDimensions, half: bool, in_place: bool):
    """(compiled decoder module, seconds spent compiling it: 0.0 from the cache)."""
    return compiled_graph(
        runtime.session,
        lambda: decoder_graph.build_decoder_module(dims, runtime.device_ref, half, in_place),
        decoder_signature(dims, half, in_place),
        decoder_label(dims),
        DECODER_COMPILE_ESTIMATE_S[runtime.label],
    )


PADDING_SCORE = np.float32(-1e9)


def step_positions(
    n_past: int, n_new: int, pad: np.ndarray, group: int
) -> tuple[np.ndarray, np.ndarray]:
    """Positions [A, G, n] and additive mask [A, G, n, past + n] of the new columns n_past.. of
    windows whose rows start with pad[a] padding columns: causal, padding hidden from real tokens
    (a padding column sees only itself, so that it stays finite), positions counted from each
    row's first real token."""
    n_total = n_past + n_new
    shape = (len(pad), group)
    if n_new == 1 and not pad.any():  # a single-token step, no padding: nothing to hide
        return (
            np.full((*shape, 1), n_past, np.int64),
            np.zeros((*shape, 1, n_total), np.float32),
        )
    cols = np.arange(n_total)[None, None, :]
    query = np.arange(n_past, n_total)[None, :, None]
    pad = pad[:, None, None]
    padding = (cols < pad) & (cols != query)
    # padding gets a large finite negative, not -inf: MAX's softmax turns a row whose leading block
    # of columns is all -inf into NaN; exp(-1e9 - max) is exactly 0 all the same
    mask = np.where(
        cols > query, np.float32(-np.inf), np.where(padding, PADDING_SCORE, np.float32(0))
    )
    positions = np.maximum(np.arange(n_past, n_total)[None, :] - pad[:, :, 0], 0)  # [A, n]
    return (
        np.ascontiguousarray(np.broadcast_to(positions[:, None], (*shape, n_new)), dtype=np.int64),
        np.ascontiguousarray(
            np.broadcast_to(mask[:, None], (*shape, n_new, n_total)), dtype=np.float32
        ),
    )


class MaxDecoder:
    """The compiled decoder graphs of one model with its weights bound; sessions share it.

    One module holds the all-layer cross K/V graph, the whole step graph and its word-timestamp
    variant; the KV cache stays in MAX buffers between steps.
    """

    def __init__(
        self,
        dims: ModelDimensions,
        params: dict[str, np.ndarray],
        runtime: MaxRuntime,
        in_place: bool | None = None,
    ):
        """in_place: the KV cache written in place (default where our kernels run, a CPU), or
        copied by each step (a GPU's: on a CPU for a test)."""
        self.dims, self.device, self.device_ref = dims, runtime.device, runtime.device_ref
        self.session = runtime.session
        self._buffers = DeviceBuffers(runtime.device)
        self._to_device, self._to_numpy = self._buffers.to_device, to_numpy
        half = uses_half_weights(runtime, dims, params)
        self.in_place = in_place_cache(runtime) if in_place is None else in_place
        self._slot_pool = SlotPool()
        compiled, self.compile_seconds = compiled_decoder(runtime, dims, half, self.in_place)
        registry = weight_layout.for_device(
            weight_layout.step_registry(dims, params, half)
            | weight_layout.cross_kv_registry(dims, params),
            runtime.device_ref,
        )
        models = self.session.init_all(compiled, weights_registry=self._buffers.weights(registry))
        self._cross_kv = models["whisper_decoder_cross_kv_all"]
        self._step = models["whisper_decoder_step"]
        # a few rows (one token per beam or window): every weight in float16 through our kernel
        self._step_rows = models.get("whisper_decoder_step_rows", self._step)
        self._scores = models["whisper_decoder_scores"]
        self._last_cross: tuple[np.ndarray, list[Buffer]] | None = None
        self._cross_handouts = 0  # sessions given _last_cross's buffers

    def cross_kv(self, audio_features: np.ndarray, reuse: bool = True) -> list[Buffer]:
        """[n_audio, ctx, d] features -> [k_0, v_0, k_1, v_1, ...] on the device.

        The last result is kept: language detection, each temperature of the fallback and word
        timing all open sessions on the same window's features (compared exactly, not by identity).
        Sessions share the buffers and only read them, unless one claims them (claim_cross).
        reuse=False: computed afresh (and not kept) even for the last features.
        """
        features = np.ascontiguousarray(audio_features, dtype=np.float32)
        if not reuse:
            return list(self._cross_kv.execute(self._to_device(features)))
        last = self._last_cross
        if (
            last is not None
            and last[0].shape == features.shape
            and np.array_equal(last[0], features)
        ):
            self._cross_handouts += 1
            return last[1]
        out = list(self._cross_kv.execute(self._to_device(features)))
        self._last_cross, self._cross_handouts = (features.copy(), out), 1
        return out

    def remember_cross(self, audio_features: np.ndarray, cross: list[Buffer]) -> None:
        """Keep `cross`, computed elsewhere (the encoder graph), as the cross K/V of these
        features: the next sessions on them use it."""
        features = np.ascontiguousarray(audio_features, dtype=np.float32)
        self._last_cross, self._cross_handouts = (features.copy(), cross), 0

    def claim_cross(self, cross: list[Buffer]) -> bool:
        """Whether `cross` (from cross_kv) is the caller's to change: the last result, handed
        out to the caller alone. It is then forgotten here, and no later session gets it."""
        last = self._last_cross
        if last is None or last[1] is not cross or self._cross_handouts > 1:
            return False  # shared, or no longer known how widely
        self._last_cross = None
        return True

    def new_cache(
        self, n_audio: int, group: int, capacity: int | None = None, prefill: bool = False
    ) -> SlotCache | CopiedCache:
        """An empty KV cache for n_audio x group rows: in place where our kernels run, holding
        `capacity` positions (default the text context); prefill: one row per window to begin with
        (a prompt the window's rows share), `expand`ed to `group` after it."""
        if self.in_place:
            capacity = self.dims.n_text_ctx if capacity is None else capacity
            rows = n_audio if prefill else None
            return SlotCache(self.dims, n_audio * group, capacity, rows, self._slot_pool)
        return CopiedCache(self.dims, self._buffers, n_audio, 1 if prefill else group)

    def step(
        self,
        tokens: np.ndarray,
        n_past: int,
        cross: list[Buffer],
        cache: SlotCache | CopiedCache,
        rows: np.ndarray | None = None,
        pad: np.ndarray | None = None,
    ) -> Buffer:
        """tokens [A, G, n] (the new ones only) -> logits Buffer [A, G, k, vocab]; `cache` (its rows
        the A*G rows) advanced by the n positions.

        rows: the k indices (into the n new tokens) whose logits are computed; default the last.
        pad [A]: leading padding columns of each window's rows (default none).
        """
        n_audio, group, n_new = tokens.shape
        pad = np.zeros(n_audio, np.int64) if pad is None else np.asarray(pad, np.int64)
        if n_past + n_new - int(pad.max()) > self.dims.n_text_ctx:  # no row within the context
            raise ValueError(
                f"{n_past + n_new} tokens exceed the text context ({self.dims.n_text_ctx})"
            )
        if cache.rows != n_audio * group:
            raise ValueError(f"a cache of {cache.rows} rows for a step of {n_audio * group}")
        rows = np.array([n_new - 1], np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
        positions, mask = step_positions(n_past, n_new, pad, group)
        positions = np.minimum(positions, self.dims.n_text_ctx - 1)  # rows past their end: ignored
        order, buffers = cache.step_inputs(n_new)
        graph = self._step_rows if tokens.size <= ROWS_GRAPH_MAX else self._step
        logits, *outputs = graph.execute(
            self._to_device(np.asarray(tokens, dtype=np.int64)),
            self._to_device(positions),
            self._to_device(rows),
            self._to_device(mask),
            self._to_device(order.reshape(n_audio, group, *order.shape[1:])),
            *cross,
            *buffers,
        )
        cache.advance(order, outputs)
        return logits

    def cross_attention_scores(self, audio_features: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """Pre-softmax cross-attention scores [n_layer, heads, T, ctx] for one window and one
        token row."""
        tokens = np.asarray(tokens, dtype=np.int64).reshape(1, 1, -1)
        n = tokens.shape[2]
        if n > self.dims.n_text_ctx:
            raise ValueError(f"{n} tokens exceed the text context ({self.dims.n_text_ctx})")
        cross = self.cross_kv(np.asarray(audio_features, dtype=np.float32)[:1])
        positions, mask = step_positions(0, n, np.zeros(1, np.int64), 1)
        order, buffers = self.new_cache(1, 1).step_inputs(n)
        scores = self._scores.execute(
            self._to_device(tokens),
            self._to_device(positions),
            self._to_device(mask),
            self._to_device(order.reshape(1, 1, *order.shape[1:])),
            *cross,
            *buffers,
        )
        return np.stack([self._to_numpy(s)[0] for s in scores])

    def new_session(
        self, audio_features: np.ndarray, pad: list[int] | None = None
    ) -> MaxDecoderSession:
        return MaxDecoderSession(self, audio_features, pad)


class MaxDecoderSession:
    """One decoding pass over a batch of windows (base.DecoderSession); the KV cache stays on
    the device (kv_cache)."""

    def __init__(
        self, decoder: MaxDecoder, audio_features: np.ndarray, pad: list[int] | None = None
    ):
        self.decoder = decoder
        self.n_audio = audio_features.shape[0]
        self.pad = None if pad is None or not any(pad) else np.asarray(pad, np.int64)
        self.cross = decoder.cross_kv(audio_features)
        self._own_cross = False  # the cross K/V is the decoder's, shared (claim_cross)
        self.cache: SlotCache | CopiedCache | None = None
        self.n_cached = 0

    def _new_cache(self, group: int, prefill: bool = False) -> SlotCache | CopiedCache:
        padding = 0 if self.pad is None else int(self.pad.max())
        capacity = self.decoder.dims.n_text_ctx + padding
        return self.decoder.new_cache(self.n_audio, group, capacity, prefill)

    def logits(self, tokens: np.ndarray, positions: list[int] | None = None) -> np.ndarray:
        tokens = np.asarray(tokens)
        batch, n_tokens = tokens.shape
        if batch % self.n_audio:
            raise ValueError(
                f"{batch} token rows do not split evenly over {self.n_audio} audio windows"
            )
        group = batch // self.n_audio
        new = tokens[:, self.n_cached :].reshape(self.n_audio, group, -1)
        decoder = self.decoder
        if new.shape[2] == 0:  # nothing new to feed
            return np.zeros((batch, 0, decoder.dims.n_vocab), np.float32)
        rows = (
            np.arange(new.shape[2]) if positions is None else np.asarray(positions) - self.n_cached
        )
        if self.cache is None and group > 1 and (new == new[:, :1]).all():
            # Prefill of beams (or samples) that all start alike: run one row per window, whose
            # cache the others then share, and copy its logits (5x less work for a beam of 5 after
            # a long prompt).
            self.cache = self._new_cache(group, prefill=True)
            logits = decoder.step(new[:, :1], 0, self.cross, self.cache, rows, self.pad)
            self.cache.expand(group)
            logits = np.repeat(decoder._to_numpy(logits), group, axis=1)
        else:
            if self.cache is None:
                self.cache = self._new_cache(group)
            logits = decoder.step(new, self.n_cached, self.cross, self.cache, rows, self.pad)
            logits = decoder._to_numpy(logits)
        self.n_cached = n_tokens
        return logits.reshape(batch, -1, logits.shape[-1])

    def rearrange(self, source_indices: list[int]) -> None:
        if self.cache is None:
            return
        index = np.asarray(source_indices, dtype=np.int64)
        rows = self.cache.rows
        if index.shape != (rows,) or not ((index >= 0) & (index < rows)).all():
            raise ValueError(f"a reorder of {rows} cache rows needs {rows} indices below {rows}")
        self.cache.reorder(index)

    def keep_windows(self, windows: list[int]) -> None:
        """Go on with only these windows (ascending indices into the current ones): their cache
        rows, cross K/V and padding; the others have ended and leave the batch."""
        index = np.asarray(windows, dtype=np.int64)
        # The cross K/V is shared with other sessions unless the decoder lets this one claim it:
        # then copied once.
        own_cross = self._own_cross or self.decoder.claim_cross(self.cross)
        if self.cache is not None:
            group = self.cache.rows // self.n_audio
            self.cache.keep((index[:, None] * group + np.arange(group)).ravel())
        self.cross = [self._kept(b, index, in_place=own_cross) for b in self.cross]
        self._own_cross = True
        self.pad = None if self.pad is None else self.pad[index]
        self.n_audio = len(index)

    def _kept(self, buffer: Buffer, index: np.ndarray, in_place: bool) -> Buffer:
        """The rows `index` of a [n_audio, ...] buffer (buffers.kept_rows)."""
        return self.decoder._to_device(kept_rows(self.decoder._to_numpy(buffer), index, in_place))
