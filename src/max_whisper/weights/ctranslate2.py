"""CTranslate2 `model.bin` (WhisperSpec), whole or split into plain-concatenated parts.

Layout, little-endian and packed: u32 binary version; if version >= 2: str spec name, u32 revision;
u32 variable count; per variable: str name, u8 rank, u32 dims[rank], then (version >= 4) u8 dtype +
u32 byte count, or (older) u8 item size + u32 item count; then the raw C-order data. If
version >= 3: u32 alias count and (str alias, str target) pairs. A str is a u16 length that counts
a trailing NUL. Rank-0 variables are settings (num_heads, activation...); int8/int16 weights carry
`<name>_scale`.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..dims import ModelDimensions
from .adapter import WeightAdapter
from .dtypes import bfloat16_to_float32
from .errors import CorruptWeightsError
from .files import read_files
from .openai_schema import dims_from_params

MAX_BINARY_VERSION = 6
# CTranslate2's DataType enum; "bf16" is read as uint16 bit patterns.
_DTYPES = {0: "<f4", 1: "i1", 2: "<i2", 3: "<i4", 4: "<f2", 5: "bf16"}
# Versions < 4 store an item size instead of a dtype.
_DTYPE_OF_ITEM_SIZE = {4: 0, 2: 2, 1: 1}

# Block tensors: self-attention linear_0 is the fused q|k|v projection; cross-attention
# ("attention") linear_0 is q and linear_1 the fused k|v. The key bias block is dropped: Whisper's
# key has no bias, and a key bias only adds a per-query constant to the attention logits, which
# softmax ignores.
CT2_ADAPTER = WeightAdapter(
    block=re.compile(r"(?P<side>encoder|decoder)/layer_(?P<index>\d+)/(?P<rest>.+)"),
    layer={
        "self_attention/layer_norm/gamma": "attn_ln.weight",
        "self_attention/layer_norm/beta": "attn_ln.bias",
        "self_attention/linear_0/weight": (
            "attn.query.weight",
            "attn.key.weight",
            "attn.value.weight",
        ),
        "self_attention/linear_0/bias": ("attn.query.bias", None, "attn.value.bias"),
        "self_attention/linear_1/weight": "attn.out.weight",
        "self_attention/linear_1/bias": "attn.out.bias",
        "attention/layer_norm/gamma": "cross_attn_ln.weight",
        "attention/layer_norm/beta": "cross_attn_ln.bias",
        "attention/linear_0/weight": "cross_attn.query.weight",
        "attention/linear_0/bias": "cross_attn.query.bias",
        "attention/linear_1/weight": ("cross_attn.key.weight", "cross_attn.value.weight"),
        "attention/linear_1/bias": (None, "cross_attn.value.bias"),
        "attention/linear_2/weight": "cross_attn.out.weight",
        "attention/linear_2/bias": "cross_attn.out.bias",
        "ffn/layer_norm/gamma": "mlp_ln.weight",
        "ffn/layer_norm/beta": "mlp_ln.bias",
        "ffn/linear_0/weight": "mlp.0.weight",
        "ffn/linear_0/bias": "mlp.0.bias",
        "ffn/linear_1/weight": "mlp.2.weight",
        "ffn/linear_1/bias": "mlp.2.bias",
    },
    top={
        "encoder/conv1/weight": "encoder.conv1.weight",
        "encoder/conv1/bias": "encoder.conv1.bias",
        "encoder/conv2/weight": "encoder.conv2.weight",
        "encoder/conv2/bias": "encoder.conv2.bias",
        "encoder/position_encodings/encodings": "encoder.positional_embedding",
        "encoder/layer_norm/gamma": "encoder.ln_post.weight",
        "encoder/layer_norm/beta": "encoder.ln_post.bias",
        "decoder/embeddings/weight": "decoder.token_embedding.weight",
        "decoder/position_encodings/encodings": "decoder.positional_embedding",
        "decoder/layer_norm/gamma": "decoder.ln.weight",
        "decoder/layer_norm/beta": "decoder.ln.bias",
        # decoder/projection/weight is tied to the token embedding (an alias): not a tensor of its
        # own.
    },
)


def read_ctranslate2(paths: Sequence[Path]) -> tuple[dict[str, np.ndarray], ModelDimensions]:
    """Read a CTranslate2 Whisper model; several paths are the parts of one split file, in order."""
    variables = read_variables(paths)
    settings = {n: v for n, v in variables.items() if v.ndim == 0 and not n.endswith("_scale")}
    params = CT2_ADAPTER.convert(_dequantize(variables))

    def heads(side: str) -> int | None:
        value = settings.get(f"{side}/num_heads")
        return int(value) if value is not None else None

    return params, dims_from_params(params, heads("encoder"), heads("decoder"))


def read_variables(paths: Sequence[Path]) -> dict[str, np.ndarray]:
    """Every variable of the file by name, aliases resolved; arrays are views of one file buffer."""
    reader = _Reader(read_files(paths), str(paths[0]))
    version = reader.unpack("I")
    if not 1 <= version <= 255:
        raise CorruptWeightsError(
            f"'{reader.source}' is not a recognised model file "
            "(expected a CTranslate2 model.bin, an openai-whisper .pt or a .safetensors file)"
        )
    if version > MAX_BINARY_VERSION:
        raise CorruptWeightsError(
            f"'{reader.source}' uses CTranslate2 binary version {version}; "
            f"this reader knows versions 1-{MAX_BINARY_VERSION}"
        )
    if version >= 2:
        spec = reader.string()
        reader.unpack("I")  # spec revision
        if spec != "WhisperSpec":
            raise CorruptWeightsError(
                f"'{reader.source}' holds a CTranslate2 '{spec}' model, not Whisper"
            )

    variables = {}
    for _ in range(reader.unpack("I")):
        name = reader.string()
        shape = tuple(reader.unpack("I") for _ in range(reader.unpack("B")))
        if version >= 4:
            dtype_id, n_bytes = reader.unpack("B"), reader.unpack("I")
        else:
            item_size = reader.unpack("B")
            dtype_id, n_bytes = (
                _DTYPE_OF_ITEM_SIZE.get(item_size, -1),
                item_size * reader.unpack("I"),
            )
        variables[name] = reader.array(name, shape, dtype_id, n_bytes)

    if version >= 3:
        for _ in range(reader.unpack("I")):
            alias, target = reader.string(), reader.string()
            if target not in variables:
                raise CorruptWeightsError(
                    f"'{reader.source}': alias '{alias}' points to unknown variable '{target}'"
                )
            variables[alias] = variables[target]
    if reader.pos != len(reader.buf):
        raise CorruptWeightsError(
            f"'{reader.source}' has {len(reader.buf) - reader.pos} "
            "unexpected bytes after the model data"
        )
    return variables


def _dequantize(variables: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Float tensors: an int8 weight has one scale per output row, an int16 weight one scalar scale;
    the stored value is round(weight * scale). Drops settings and the scales themselves."""
    tensors = {}
    for name, value in variables.items():
        if value.ndim == 0 or (name.endswith("_scale") and name[: -len("_scale")] in variables):
            continue
        scale = variables.get(f"{name}_scale")
        if scale is not None:
            scale = np.asarray(scale, dtype=np.float32)
            value = value.astype(np.float32) / scale.reshape(
                scale.shape + (1,) * (value.ndim - scale.ndim)
            )
        tensors[name] = value
    return tensors


class _Reader:
    """Bounds-checked little-endian reads from the model buffer."""

    def __init__(self, buf: np.ndarray, source: str):
        self.buf, self.source, self.pos = buf, source, 0

    def _take(self, n: int) -> int:
        start = self.pos
        if start + n > len(self.buf):
            raise CorruptWeightsError(
                f"'{self.source}' is truncated or corrupt: it ends at byte {len(self.buf)}, "
                f"but the data goes on to byte {start + n}"
            )
        self.pos += n
        return start

    def unpack(self, fmt: str) -> int:
        fmt = "<" + fmt
        return struct.unpack_from(fmt, self.buf, self._take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        length = self.unpack("H")
        start = self._take(length)
        raw = self.buf[start : start + length].tobytes()
        try:
            if not raw.endswith(b"\0"):
                raise UnicodeError
            return raw[:-1].decode("utf-8")
        except UnicodeError:
            raise CorruptWeightsError(
                f"'{self.source}' is corrupt: bad name at byte {start}"
            ) from None

    def array(self, name: str, shape: tuple[int, ...], dtype_id: int, n_bytes: int) -> np.ndarray:
        if dtype_id not in _DTYPES:
            raise CorruptWeightsError(
                f"'{self.source}': variable '{name}' has an unsupported data type ({dtype_id})"
            )
        code = _DTYPES[dtype_id]
        dtype = np.dtype("<u2" if code == "bf16" else code)
        count = int(np.prod(shape, dtype=np.int64))
        if count * dtype.itemsize != n_bytes:
            raise CorruptWeightsError(
                f"'{self.source}' is corrupt: variable '{name}' {shape} has {n_bytes} bytes"
            )
        value = np.frombuffer(self.buf, dtype, count, offset=self._take(n_bytes)).reshape(shape)
        return bfloat16_to_float32(value) if code == "bf16" else value
