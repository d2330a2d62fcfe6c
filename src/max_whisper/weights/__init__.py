"""Whisper weights from CTranslate2, openai-whisper or Hugging Face files, under openai-whisper names.

`load_model_weights` finds the files, picks the reader for their format and returns a `ModelWeights`:
dims plus a `{openai-whisper state_dict name: float32 array}` dict that loads strictly into
`whisper.model.Whisper(dims)`. Each reader turns its format into tensors under that format's own names;
a `WeightAdapter` table (one per format) renames them; `_assemble` checks the result against the
shapes the dims call for.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import numpy as np

from ..dims import NAMED_MODELS, ModelDimensions, ModelNotFoundError

__all__ = [
    "CorruptWeightsError", "ModelWeights", "WeightsError", "expected_shapes", "load_model_weights", "sinusoids",
]


class WeightsError(ValueError):
    """The weights could not be loaded; the message is one line that says how to fix it."""


class CorruptWeightsError(WeightsError):
    """A file's content is wrong (truncated, garbage, not Whisper). The message names the problem;
    `load_model_weights` appends the fix, which depends on where the file came from."""


@dataclass
class ModelWeights:
    name: str  # "tiny.en", "base" or the path given
    dims: ModelDimensions
    params: dict[str, np.ndarray]  # openai-whisper state_dict names, float32, C-contiguous
    tokenizer_path: Optional[Path]  # tokenizer.json beside the weights, if present
    alignment_heads: Optional[np.ndarray]  # int [k, 2] rows of (text layer, head), if known
    source_format: str  # "ctranslate2" | "openai" | "safetensors"


def load_model_weights(name_or_path: Union[str, os.PathLike]) -> ModelWeights:
    """Load a named model (see dims.NAMED_MODELS) or the weights in a file or folder."""
    key = os.fspath(name_or_path)
    model = NAMED_MODELS.get(key) if isinstance(name_or_path, str) else None
    if model is not None:
        try:
            paths = model.locate()
        except ModelNotFoundError as exc:
            raise WeightsError(str(exc)) from None
        return _load(key, "ctranslate2", paths, fix=f"reinstall it with --force-reinstall: {model.pip_hint}")

    path = Path(key).expanduser()
    if not path.exists():
        raise WeightsError(
            f"'{key}' is neither a known model ({', '.join(NAMED_MODELS)}) nor an existing file or folder: "
            "pass a model name, or a path to model.bin, a .pt or .safetensors file, or a folder holding one"
        )
    source_format, paths = _resolve(path)
    return _load(key, source_format, paths, fix="re-download or re-convert the model")


def _load(name: str, source_format: str, paths: list[Path], fix: str) -> ModelWeights:
    from . import ctranslate2, hf_safetensors, openai_checkpoint  # here: they import this module

    reader = {
        "ctranslate2": ctranslate2.read_ctranslate2,
        "openai": openai_checkpoint.read_openai_checkpoint,
        "safetensors": hf_safetensors.read_hf_safetensors,
    }[source_format]
    try:
        params, dims = reader(paths)
        return _assemble(name, params, dims, source_format, paths[0].parent)
    except CorruptWeightsError as exc:
        raise CorruptWeightsError(f"{exc}; {fix}") from None


# ---------------------------------------------------------------------------------------------------
# Finding the files


def _resolve(path: Path) -> tuple[str, list[Path]]:
    """The format and the file(s) of the weights at `path` (a file or a folder)."""
    if path.is_dir():
        path = _weights_file_in(path)
    if path.name.endswith(".part1"):
        return "ctranslate2", _split_parts(path)
    return _sniff_format(path), [path]


def _weights_file_in(folder: Path) -> Path:
    for name in ("model.bin", "model.bin.part1", "model.safetensors"):
        if (folder / name).is_file():
            return folder / name
    candidates = sorted(folder.glob("*.pt")) + sorted(folder.glob("*.safetensors"))
    if len(candidates) == 1:
        return candidates[0]
    found = f"found {len(candidates)} .pt/.safetensors files" if candidates else "found none"
    raise WeightsError(
        f"no Whisper weights in folder '{folder}' ({found}): it should hold model.bin, model.bin.part1 "
        "(+ .part2), model.safetensors + config.json, or exactly one .pt file"
    )


def _split_parts(first: Path) -> list[Path]:
    """All parts of a split CTranslate2 file: `<x>.part1`, `<x>.part2`… beside each other, or the
    parts of the named model whose first part this is (their parts live in separate packages)."""
    stem = first.name[: -len("1")]
    parts = [first]
    while (nxt := first.with_name(f"{stem}{len(parts) + 1}")).is_file():
        parts.append(nxt)
    if len(parts) > 1:
        return parts
    for model in NAMED_MODELS.values():
        if len(model.files) < 2 or Path(model.files[0]).name != first.name:
            continue
        try:
            located = model.locate()
        except ModelNotFoundError:
            continue
        if located[0].resolve() == first.resolve():
            return located
    raise WeightsError(
        f"'{first}' is the first part of a split model but {stem}2 is not beside it: "
        "put all the parts in one folder"
    )


def _sniff_format(path: Path) -> str:
    """Pick the reader from the first bytes; the CTranslate2 reader reports files that fit none."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as exc:
        raise WeightsError(f"cannot read '{path}': {exc.strerror}") from None
    if head.startswith(b"PK\x03\x04") or head.startswith(b"\x80"):  # torch.save: zip, or legacy pickle
        return "openai"
    if len(head) > 8 and head[8:9] == b"{":  # safetensors: u64 header size, then a JSON header
        return "safetensors"
    return "ctranslate2"


def read_files(paths: Sequence[Path]) -> np.ndarray:
    """The concatenated bytes of `paths` (a split file is a plain concatenation) as one uint8 array."""
    try:
        sizes = [p.stat().st_size for p in paths]
        buf = np.empty(sum(sizes), dtype=np.uint8)  # not zero-filled, unlike bytearray
        view = memoryview(buf)
        offset = 0
        for path, size in zip(paths, sizes):
            with open(path, "rb", buffering=0) as f:
                if f.readinto(view[offset: offset + size]) != size:
                    raise CorruptWeightsError(f"'{path}' changed size while being read")
            offset += size
    except OSError as exc:
        raise WeightsError(f"cannot read '{exc.filename}': {exc.strerror}") from None
    if not len(buf):
        raise CorruptWeightsError(f"'{paths[0]}' is empty")
    return buf


def read_json(path: Path) -> Optional[dict]:
    """A JSON object file, or None when the file does not exist."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptWeightsError(f"'{path}' is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CorruptWeightsError(f"'{path}' does not hold a JSON object")
    return data


# ---------------------------------------------------------------------------------------------------
# Renaming, conversion, shapes

# What a source tensor becomes: an openai-whisper name; a tuple of names for a fused tensor, split into
# equal blocks of rows (None drops a block); or None to drop the tensor.
Target = Union[str, tuple[Optional[str], ...], None]


@dataclass(frozen=True)
class WeightAdapter:
    """One format's tensor names -> openai-whisper names, as a table.

    `block` matches the name of a tensor inside a transformer block, with groups `side`
    ("encoder"/"decoder"), `index` and `rest`; `layer` maps `rest` to the name after
    "<side>.blocks.<index>.". `top` maps every other name. Names in neither table are ignored
    (settings, a tied output projection); `_assemble` reports any tensor that is then missing.
    """

    block: re.Pattern
    layer: Mapping[str, Target]
    top: Mapping[str, Target]

    def convert(self, tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        params = {}
        for name, value in tensors.items():
            match = self.block.fullmatch(name)
            if match:
                prefix = f"{match['side']}.blocks.{int(match['index'])}."
                target = self.layer.get(match["rest"])
            else:
                prefix, target = "", self.top.get(name)
            if target is None:
                continue
            targets = (target,) if isinstance(target, str) else target
            if value.ndim == 0 or value.shape[0] % len(targets):
                raise CorruptWeightsError(
                    f"tensor '{name}' has shape {value.shape}, not {len(targets)} equal blocks of rows"
                )
            for dst, part in zip(targets, np.split(value, len(targets), axis=0)):
                if dst is not None:
                    params[prefix + dst] = as_float32(part)
        return params


def as_float32(value: np.ndarray) -> np.ndarray:
    """A float32, C-contiguous copy that owns its memory (the source may be a view of a file buffer)."""
    return np.array(value, dtype=np.float32, order="C", copy=True)


def bfloat16_to_float32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 values given as their uint16 bit patterns (NumPy has no bfloat16) -> float32."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def sinusoids(length: int, channels: int, max_timescale: float = 10000) -> np.ndarray:
    """The encoder's fixed positional embedding: whisper.model.sinusoids in NumPy. Computed in
    float64; torch's float32 version differs by up to ~1e-4 at the far positions (arguments ~1500 rad)."""
    log_timescale_increment = np.log(max_timescale) / (channels // 2 - 1)
    inv_timescales = np.exp(-log_timescale_increment * np.arange(channels // 2))
    scaled_time = np.arange(length)[:, None] * inv_timescales[None, :]
    return np.concatenate([np.sin(scaled_time), np.cos(scaled_time)], axis=1).astype(np.float32)


def dims_from_params(
    params: Mapping[str, np.ndarray], n_audio_head: Optional[int] = None, n_text_head: Optional[int] = None
) -> ModelDimensions:
    """Dims from the tensor shapes (openai names). Head counts are not visible in shapes: when not
    given, use Whisper's head size of 64."""

    def shape(name: str) -> tuple[int, ...]:
        if name not in params:
            raise CorruptWeightsError(f"no tensor for '{name}': not a Whisper model")
        return params[name].shape

    def n_blocks(side: str) -> int:
        pattern = re.compile(rf"{side}\.blocks\.(\d+)\.")
        return 1 + max((int(m[1]) for m in map(pattern.match, params) if m), default=-1)

    n_audio_state, n_mels = shape("encoder.conv1.weight")[:2]
    n_vocab, n_text_state = shape("decoder.token_embedding.weight")
    if "encoder.positional_embedding" in params:
        n_audio_ctx = shape("encoder.positional_embedding")[0]
    else:  # a buffer some files leave out; Whisper always uses 1500 positions (30 s)
        n_audio_ctx = 1500
    return ModelDimensions(
        n_mels=n_mels,
        n_audio_ctx=n_audio_ctx,
        n_audio_state=n_audio_state,
        n_audio_head=n_audio_head or n_audio_state // 64,
        n_audio_layer=n_blocks("encoder"),
        n_vocab=n_vocab,
        n_text_ctx=shape("decoder.positional_embedding")[0],
        n_text_state=n_text_state,
        n_text_head=n_text_head or n_text_state // 64,
        n_text_layer=n_blocks("decoder"),
    )


def expected_shapes(dims: ModelDimensions) -> dict[str, tuple[int, ...]]:
    """Every tensor of openai-whisper's `Whisper(dims).state_dict()` and its shape."""
    d_a, d_t = dims.n_audio_state, dims.n_text_state
    shapes = {
        "encoder.positional_embedding": (dims.n_audio_ctx, d_a),
        "encoder.conv1.weight": (d_a, dims.n_mels, 3),
        "encoder.conv1.bias": (d_a,),
        "encoder.conv2.weight": (d_a, d_a, 3),
        "encoder.conv2.bias": (d_a,),
        "encoder.ln_post.weight": (d_a,),
        "encoder.ln_post.bias": (d_a,),
        "decoder.positional_embedding": (dims.n_text_ctx, d_t),
        "decoder.token_embedding.weight": (dims.n_vocab, d_t),
        "decoder.ln.weight": (d_t,),
        "decoder.ln.bias": (d_t,),
    }
    sides = (
        ("encoder", dims.n_audio_layer, d_a, ("attn",)),
        ("decoder", dims.n_text_layer, d_t, ("attn", "cross_attn")),
    )
    for side, n_layer, d, attentions in sides:
        for i in range(n_layer):
            p = f"{side}.blocks.{i}."
            for a in attentions:
                shapes.update({
                    f"{p}{a}.query.weight": (d, d), f"{p}{a}.query.bias": (d,),
                    f"{p}{a}.key.weight": (d, d),  # Whisper's key projection has no bias
                    f"{p}{a}.value.weight": (d, d), f"{p}{a}.value.bias": (d,),
                    f"{p}{a}.out.weight": (d, d), f"{p}{a}.out.bias": (d,),
                    f"{p}{a}_ln.weight": (d,), f"{p}{a}_ln.bias": (d,),
                })
            shapes.update({
                f"{p}mlp.0.weight": (4 * d, d), f"{p}mlp.0.bias": (4 * d,),
                f"{p}mlp.2.weight": (d, 4 * d), f"{p}mlp.2.bias": (d,),
                f"{p}mlp_ln.weight": (d,), f"{p}mlp_ln.bias": (d,),
            })
    return shapes


def _assemble(
    name: str, params: dict[str, np.ndarray], dims: ModelDimensions, source_format: str, folder: Path
) -> ModelWeights:
    """Check `params` against `dims` (dropping extras), add what files may leave out, find the
    tokenizer and alignment heads beside the weights."""
    if "encoder.positional_embedding" not in params:
        params["encoder.positional_embedding"] = sinusoids(dims.n_audio_ctx, dims.n_audio_state)
    shapes = expected_shapes(dims)
    missing = [k for k in shapes if k not in params]
    if missing:
        raise CorruptWeightsError(
            f"{len(missing)} tensors are missing (e.g. '{missing[0]}'): not a complete Whisper model"
        )
    for key, shape in shapes.items():
        if params[key].shape != shape:
            raise CorruptWeightsError(f"tensor '{key}' has shape {params[key].shape}, expected {shape} for {dims}")
    tokenizer = folder / "tokenizer.json"
    return ModelWeights(
        name=name,
        dims=dims,
        params={k: params[k] for k in shapes},
        tokenizer_path=tokenizer if tokenizer.is_file() else None,
        alignment_heads=_alignment_heads(folder, dims),
        source_format=source_format,
    )


def _alignment_heads(folder: Path, dims: ModelDimensions) -> Optional[np.ndarray]:
    """(layer, head) pairs from config.json (CTranslate2) or generation_config.json (Hugging Face)."""
    for filename in ("config.json", "generation_config.json"):
        config = read_json(folder / filename) or {}
        if config.get("alignment_heads"):
            try:
                heads = np.asarray(config["alignment_heads"], dtype=np.int64)
            except (TypeError, ValueError):
                heads = np.zeros(0)
            valid = heads.ndim == 2 and heads.shape[1] == 2 and (heads >= 0).all()
            if not (valid and (heads < [dims.n_text_layer, dims.n_text_head]).all()):
                raise CorruptWeightsError(
                    f"'{folder / filename}' has invalid alignment_heads (need [text layer, head] pairs)"
                )
            return heads
    return None
