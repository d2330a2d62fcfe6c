"""Hugging Face `WhisperForConditionalGeneration` weights: model.safetensors + config.json.

The safetensors format is parsed here (8-byte little-endian header size, a JSON header of
{name: {dtype, shape, data_offsets}}, then the data) rather than through the `safetensors` package.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..dims import ModelDimensions
from .adapter import WeightAdapter
from .dtypes import bfloat16_to_float32
from .errors import CorruptWeightsError
from .files import read_files, read_json
from .openai_schema import dims_from_params

_DTYPES = {
    "F64": "<f8",
    "F32": "<f4",
    "F16": "<f2",
    "BF16": "<u2",  # BF16 as its bit patterns
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "I8": "i1",
    "U8": "u1",
    "BOOL": "?",
}


def _pair(src: str, dst: str) -> dict[str, str]:
    return {f"{src}.weight": f"{dst}.weight", f"{src}.bias": f"{dst}.bias"}


def _attention(src: str, dst: str) -> dict[str, str]:
    # k_proj has no bias in HF either; were one present it would map to a name _assemble drops.
    return {
        **_pair(f"{src}.q_proj", f"{dst}.query"),
        **_pair(f"{src}.k_proj", f"{dst}.key"),
        **_pair(f"{src}.v_proj", f"{dst}.value"),
        **_pair(f"{src}.out_proj", f"{dst}.out"),
        **_pair(f"{src}_layer_norm", f"{dst}_ln"),
    }


# Names after an optional "model." prefix; "proj_out.weight" is tied to the token embedding.
HF_ADAPTER = WeightAdapter(
    block=re.compile(r"(?P<side>encoder|decoder)\.layers\.(?P<index>\d+)\.(?P<rest>.+)"),
    layer={
        **_attention("self_attn", "attn"),
        **_attention("encoder_attn", "cross_attn"),
        **_pair("fc1", "mlp.0"),
        **_pair("fc2", "mlp.2"),
        **_pair("final_layer_norm", "mlp_ln"),
    },
    top={
        **_pair("encoder.conv1", "encoder.conv1"),
        **_pair("encoder.conv2", "encoder.conv2"),
        "encoder.embed_positions.weight": "encoder.positional_embedding",
        **_pair("encoder.layer_norm", "encoder.ln_post"),
        "decoder.embed_tokens.weight": "decoder.token_embedding.weight",
        "decoder.embed_positions.weight": "decoder.positional_embedding",
        **_pair("decoder.layer_norm", "decoder.ln"),
    },
)


def read_hf_safetensors(paths: Sequence[Path]) -> tuple[dict[str, np.ndarray], ModelDimensions]:
    """Read HF Whisper weights; dims come from config.json beside them, else from the shapes."""
    (path,) = paths
    tensors = {name.removeprefix("model."): value for name, value in read_safetensors(path).items()}
    params = HF_ADAPTER.convert(tensors)
    config = read_json(path.parent / "config.json")
    if config is None:
        return params, dims_from_params(params)
    try:
        dims = ModelDimensions(
            n_mels=config["num_mel_bins"],
            n_audio_ctx=config["max_source_positions"],
            n_audio_state=config["d_model"],
            n_audio_head=config["encoder_attention_heads"],
            n_audio_layer=config["encoder_layers"],
            n_vocab=config["vocab_size"],
            n_text_ctx=config["max_target_positions"],
            n_text_state=config["d_model"],
            n_text_head=config["decoder_attention_heads"],
            n_text_layer=config["decoder_layers"],
        )
    except KeyError as exc:
        raise CorruptWeightsError(
            f"'{path.parent / 'config.json'}' lacks {exc} (not a Whisper config)"
        ) from None
    return params, dims


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a .safetensors file, as arrays that view one buffer of the file."""
    buf = read_files([path])
    size = int.from_bytes(buf[:8].tobytes(), "little") if len(buf) >= 8 else len(buf)
    try:
        if 8 + size > len(buf):
            raise ValueError("truncated header")
        header = json.loads(buf[8 : 8 + size].tobytes())
        tensors = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            tensors[name] = _tensor(buf, 8 + size, info)
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptWeightsError(f"'{path}' is not a valid safetensors file ({exc})") from None
    return tensors


def _tensor(buf: np.ndarray, data_start: int, info: dict) -> np.ndarray:
    dtype = np.dtype(_DTYPES[info["dtype"]])
    shape = tuple(int(d) for d in info["shape"])
    begin, end = (data_start + int(o) for o in info["data_offsets"])
    count = int(np.prod(shape, dtype=np.int64))
    if end > len(buf) or end - begin != count * dtype.itemsize:
        raise ValueError(f"data of a {shape} {info['dtype']} tensor is cut or misplaced")
    value = np.frombuffer(buf, dtype, count, offset=begin).reshape(shape)
    return bfloat16_to_float32(value) if info["dtype"] == "BF16" else value
