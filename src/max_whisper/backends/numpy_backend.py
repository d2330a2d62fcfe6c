"""Whisper in NumPy: the same network as openai-whisper's model.py, on BLAS, with nothing to
compile.

The `max` backend runs on it while its MAX graphs compile in a background process on a machine
that has never compiled them (see backends/max/warmup.py); `dtype=np.float64` gives the float64
evaluation that the parity tests measure every float32 implementation against.
"""

from __future__ import annotations

import ctypes
import math
from functools import cached_property
from pathlib import Path

import numpy as np

from ..dims import LAYER_NORM_EPS
from ..weights import ModelWeights

# erf as a rational function on [-4, 4] (Eigen's float approximation; |error| < 1e-7 in float64)
_ERF_P = (
    -2.72614225801306e-10,
    2.77068142495902e-08,
    -2.10102402082508e-06,
    -5.69250639462346e-05,
    -7.34990630326855e-04,
    -2.95459980854025e-03,
    -1.60960333262415e-02,
)
_ERF_Q = (
    -1.45660718464996e-05,
    -2.13374055278905e-04,
    -1.68282697438203e-03,
    -7.37332916720468e-03,
    -1.42647390514189e-02,
)


def _erf(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, -4.0, 4.0)
    x2 = x * x
    p = np.full_like(x, _ERF_P[0])
    for c in _ERF_P[1:]:
        p = p * x2 + c
    q = np.full_like(x, _ERF_Q[0])
    for c in _ERF_Q[1:]:
        q = q * x2 + c
    return x * p / q


_exact_erf = np.frompyfunc(math.erf, 1, 1)


def gelu(x: np.ndarray) -> np.ndarray:
    """Exact (erf) GELU: float32 through a float64 rational erf (|error| < 1e-7), float64
    exactly."""
    x64 = x.astype(np.float64)
    scaled = x64 * (1.0 / math.sqrt(2.0))
    erf = _exact_erf(scaled).astype(np.float64) if x.dtype == np.float64 else _erf(scaled)
    return (0.5 * x64 * (1.0 + erf)).astype(x.dtype)


def layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    centred = x - mean
    var = np.mean(centred * centred, axis=-1, keepdims=True)
    return centred / np.sqrt(var + LAYER_NORM_EPS) * gamma + beta


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


class _Params:
    """openai-named weights in `dtype`, linear weights pre-transposed to [in, out] for `x @ W`."""

    def __init__(self, params: dict[str, np.ndarray], dtype: type):
        self._p = params
        self.dtype = dtype
        self._cache: dict[str, np.ndarray] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._cache:
            a = np.asarray(self._p[name], dtype=self.dtype)
            if name.endswith(".weight") and a.ndim == 2 and "embedding" not in name:
                a = np.ascontiguousarray(a.T)
            self._cache[name] = a
        return self._cache[name]

    def linear(self, x: np.ndarray, name: str) -> np.ndarray:
        y = x @ self[f"{name}.weight"]
        bias = f"{name}.bias"
        return y + self[bias] if bias in self._p else y

    def norm(self, x: np.ndarray, name: str) -> np.ndarray:
        return layer_norm(x, self[f"{name}.weight"], self[f"{name}.bias"])


def _heads(x: np.ndarray, n_head: int) -> np.ndarray:
    """[B, T, d] -> [B, H, T, hd]"""
    b, t, d = x.shape
    return x.reshape(b, t, n_head, d // n_head).transpose(0, 2, 1, 3)


def _merge(x: np.ndarray) -> np.ndarray:
    """[B, H, T, hd] -> [B, T, d]"""
    b, h, t, hd = x.shape
    return x.transpose(0, 2, 1, 3).reshape(b, t, h * hd)


def _conv_k3(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int) -> np.ndarray:
    """1-D conv, kernel 3, padding 1, on [B, T, C_in] with PyTorch's [C_out, C_in, 3] filter."""
    padded = np.pad(x, ((0, 0), (1, 1), (0, 0)))
    n_out = (x.shape[1] - 1) // stride + 1
    taps = [padded[:, k : k + stride * (n_out - 1) + 1 : stride] for k in range(3)]
    columns = np.concatenate(taps, axis=-1)  # [B, T_out, 3 * C_in], tap-major
    filt = np.ascontiguousarray(
        np.transpose(w, (2, 1, 0)).reshape(-1, w.shape[0])
    )  # [3 * C_in, C_out]
    return columns @ filt.astype(x.dtype) + b.astype(x.dtype)


class NumpyModel:
    """Encoder and decoder forward passes on openai-named weights, in float32 or float64."""

    def __init__(self, weights: ModelWeights, dtype: type = np.float32):
        self.dims = weights.dims
        self.dtype = dtype
        self.p = _Params(weights.params, dtype)
        self.head_scale = (self.dims.n_text_state // self.dims.n_text_head) ** -0.25

    def encode(self, mel: np.ndarray) -> np.ndarray:
        """mel [B, n_mels, 3000] -> features [B, n_audio_ctx, d]."""
        p, dims = self.p, self.dims
        x = np.ascontiguousarray(np.asarray(mel, dtype=self.dtype).transpose(0, 2, 1))
        x = gelu(
            _conv_k3(x, p["encoder.conv1.weight"], p["encoder.conv1.bias"], 1)
        )  # 3-D: not transposed
        x = gelu(_conv_k3(x, p["encoder.conv2.weight"], p["encoder.conv2.bias"], 2))
        x = x + p["encoder.positional_embedding"]
        for i in range(dims.n_audio_layer):
            prefix = f"encoder.blocks.{i}."
            h = p.norm(x, prefix + "attn_ln")
            q, k, v = (p.linear(h, prefix + f"attn.{n}") for n in ("query", "key", "value"))
            x = x + p.linear(self._attention(q, k, v, dims.n_audio_head), prefix + "attn.out")
            x = x + p.linear(
                gelu(p.linear(p.norm(x, prefix + "mlp_ln"), prefix + "mlp.0")), prefix + "mlp.2"
            )
        return p.norm(x, "encoder.ln_post")

    def _attention(self, q, k, v, n_head, mask=None) -> np.ndarray:
        return self._attend(q, self._keys(k, n_head), _heads(v, n_head), n_head, mask)

    def _keys(self, k: np.ndarray, n_head: int) -> np.ndarray:
        """K [B, T, d] -> per head, scaled, transposed [B, H, hd, T]."""
        scale = self.dtype((k.shape[-1] // n_head) ** -0.25)
        return (_heads(k, n_head) * scale).transpose(0, 1, 3, 2)

    def _attend(self, q, keys, values, n_head, mask=None) -> np.ndarray:
        """q [B, T, d] against keys from _keys and values [B, H, S, hd]."""
        scale = self.dtype((q.shape[-1] // n_head) ** -0.25)
        scores = (_heads(q, n_head) * scale) @ keys
        if mask is not None:
            scores = scores + mask
        return _merge(softmax(scores) @ values)

    def cross_kv(self, features: np.ndarray) -> list[tuple[np.ndarray, ...]]:
        """Each layer's cross K [A, ctx, d] (for word-timing scores), and K and V as _attend takes
        them (made once per window, not once per token)."""
        f = np.asarray(features, dtype=self.dtype)
        n_head, out = self.dims.n_text_head, []
        for i in range(self.dims.n_text_layer):
            k = self.p.linear(f, f"decoder.blocks.{i}.cross_attn.key")
            v = self.p.linear(f, f"decoder.blocks.{i}.cross_attn.value")
            out.append((k, self._keys(k, n_head), _heads(v, n_head)))
        return out

    def decode(
        self,
        tokens: np.ndarray,
        offset: int,
        cross: list,
        cache: list | None,
        scores_out: list | None = None,
        rows: list[int] | None = None,
    ) -> tuple[np.ndarray, list]:
        """New tokens [B, n] at positions offset.. -> (logits [B, k, vocab] at the k `rows` of
        the n, default all; self-attention K/V cache).

        `cross` holds each layer's cross K/V for [A, ctx, d] features with B = A * group rows.
        With `scores_out`, each layer's cross-attention scores before the softmax are appended
        to it.
        """
        p, dims = self.p, self.dims
        n_head = dims.n_text_head
        n_new = tokens.shape[1]
        x = (
            p["decoder.token_embedding.weight"][tokens]
            + p["decoder.positional_embedding"][offset : offset + n_new]
        )
        mask = np.triu(np.full((n_new, offset + n_new), -np.inf, self.dtype), offset + 1)
        new_cache = []
        for i in range(dims.n_text_layer):
            prefix = f"decoder.blocks.{i}."
            h = p.norm(x, prefix + "attn_ln")
            q, k, v = (p.linear(h, prefix + f"attn.{n}") for n in ("query", "key", "value"))
            if cache is not None:
                k, v = (
                    np.concatenate([cache[i][0], k], axis=1),
                    np.concatenate([cache[i][1], v], axis=1),
                )
            new_cache.append((k, v))
            x = x + p.linear(self._attention(q, k, v, n_head, mask), prefix + "attn.out")
            h = p.norm(x, prefix + "cross_attn_ln")
            q = p.linear(h, prefix + "cross_attn.query")
            ck, keys, values = cross[i]
            if scores_out is not None:
                hd = dims.n_text_state // n_head
                group = x.shape[0] // ck.shape[0]
                scores_out.append(
                    (
                        _heads(q, n_head)
                        @ _heads(np.repeat(ck, group, 0), n_head).transpose(0, 1, 3, 2)
                    )
                    / math.sqrt(hd)
                )
            # the G rows (beams) of a window share its K/V: one [G * n, d] query block per window
            shared = q.reshape(ck.shape[0], -1, q.shape[-1])
            attn = self._attend(shared, keys, values, n_head).reshape(q.shape)
            x = x + p.linear(attn, prefix + "cross_attn.out")
            x = x + p.linear(
                gelu(p.linear(p.norm(x, prefix + "mlp_ln"), prefix + "mlp.0")), prefix + "mlp.2"
            )
        x = p.norm(x if rows is None else x[:, rows], "decoder.ln")
        return x @ self.token_embedding_t, new_cache

    @cached_property
    def token_embedding_t(self) -> np.ndarray:
        """The tied output projection, [d, vocab]."""
        return np.ascontiguousarray(self.p["decoder.token_embedding.weight"].T)


class NumpyDecoderSession:
    """base.DecoderSession on NumpyModel: the KV cache is a list of NumPy arrays."""

    def __init__(self, model: NumpyModel, audio_features: np.ndarray):
        self.model = model
        self.cross = model.cross_kv(audio_features)
        self.cache: list | None = None
        self.n_cached = 0

    def logits(self, tokens: np.ndarray, positions: list[int] | None = None) -> np.ndarray:
        tokens = np.asarray(tokens)
        new = tokens[:, self.n_cached :]
        if new.shape[1] == 0:
            return np.zeros((tokens.shape[0], 0, self.model.dims.n_vocab), np.float32)
        rows = None if positions is None else [p - self.n_cached for p in positions]
        logits, self.cache = self.model.decode(
            new, self.n_cached, self.cross, self.cache, rows=rows
        )
        self.n_cached = tokens.shape[1]
        return logits.astype(np.float32, copy=False)

    def rearrange(self, source_indices: list[int]) -> None:
        if self.cache is not None:
            index = np.asarray(source_indices)
            self.cache = [(k[index], v[index]) for k, v in self.cache]


def limit_blas_threads(n: int) -> bool:
    """Best effort: cap the threads of NumPy's bundled OpenBLAS (what threadpoolctl does). Beside a
    background compile on every core, one BLAS thread runs this network 2-3x faster than two."""
    for lib_path in sorted(
        (Path(np.__file__).resolve().parent.parent / "numpy.libs").glob("*openblas*.so*")
    ):
        try:
            lib = ctypes.CDLL(str(lib_path))
        except OSError:
            continue
        for symbol in (
            "scipy_openblas_set_num_threads64_",
            "openblas_set_num_threads64_",
            "openblas_set_num_threads",
        ):
            if hasattr(lib, symbol):
                getattr(lib, symbol)(ctypes.c_int(n))
                return True
    return False


class NumpyBackend:
    """base.Backend in NumPy float32 on the CPU. `blas_threads` caps BLAS threads
    (None: as they are)."""

    name = "numpy"
    device = "cpu"

    def __init__(
        self, weights: ModelWeights, device: str = "auto", blas_threads: int | None = None
    ):
        self.dims = weights.dims
        self.model = NumpyModel(weights, np.float32)
        if blas_threads is not None:
            limit_blas_threads(blas_threads)

    def encode(self, mel: np.ndarray) -> np.ndarray:
        mel = np.asarray(mel, dtype=np.float32)
        return self.model.encode(mel[None] if mel.ndim == 2 else mel)

    def decoder_session(self, audio_features: np.ndarray) -> NumpyDecoderSession:
        features = np.asarray(audio_features, dtype=np.float32)
        return NumpyDecoderSession(self.model, features[None] if features.ndim == 2 else features)

    def cross_attention(self, audio_features: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        features = np.asarray(audio_features, dtype=np.float32)[:1]
        scores: list = []
        tokens = np.asarray(tokens, dtype=np.int64)[None]
        self.model.decode(tokens, 0, self.model.cross_kv(features), None, scores_out=scores)
        return np.stack([s[0] for s in scores]).astype(np.float32)
