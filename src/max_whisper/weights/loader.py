"""`load_model_weights`: find the weight files, sniff their format, run that format's reader,
assemble."""

from __future__ import annotations

import os
from pathlib import Path

from .ctranslate2 import read_ctranslate2
from .errors import CorruptWeightsError, WeightsError
from .hf_safetensors import read_hf_safetensors
from .model_weights import ModelWeights, assemble
from .openai_checkpoint import read_openai_checkpoint
from .registry import NAMED_MODELS, ModelNotFoundError
from .split_files import split_parts

_READERS = {
    "ctranslate2": read_ctranslate2,
    "openai": read_openai_checkpoint,
    "safetensors": read_hf_safetensors,
}


def load_model_weights(name_or_path: str | os.PathLike) -> ModelWeights:
    """Load a named model (see registry.NAMED_MODELS) or the weights in a file or folder."""
    key = os.fspath(name_or_path)
    model = NAMED_MODELS.get(key) if isinstance(name_or_path, str) else None
    if model is not None:
        try:
            paths = model.locate()
        except ModelNotFoundError as exc:
            raise WeightsError(str(exc)) from None
        return _load(
            key, "ctranslate2", paths, fix=f"reinstall it with --force-reinstall: {model.pip_hint}"
        )

    path = Path(key).expanduser()
    if not path.exists():
        raise WeightsError(
            f"'{key}' is neither a known model ({', '.join(NAMED_MODELS)}) "
            "nor an existing file or folder: pass a model name, or a path to model.bin, "
            "a .pt or .safetensors file, or a folder holding one"
        )
    source_format, paths = _resolve(path)
    return _load(key, source_format, paths, fix="re-download or re-convert the model")


def _load(name: str, source_format: str, paths: list[Path], fix: str) -> ModelWeights:
    try:
        params, dims = _READERS[source_format](paths)
        return assemble(name, params, dims, source_format, paths[0].parent)
    except CorruptWeightsError as exc:
        raise CorruptWeightsError(f"{exc}; {fix}") from None


def _resolve(path: Path) -> tuple[str, list[Path]]:
    """The format and the file(s) of the weights at `path` (a file or a folder)."""
    if path.is_dir():
        path = _weights_file_in(path)
    if path.name.endswith(".part1"):
        return "ctranslate2", split_parts(path)
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
        f"no Whisper weights in folder '{folder}' ({found}): "
        "it should hold model.bin, model.bin.part1 "
        "(+ .part2), model.safetensors + config.json, or exactly one .pt file"
    )


def _sniff_format(path: Path) -> str:
    """Pick the reader from the first bytes; the CTranslate2 reader reports files that fit none."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as exc:
        raise WeightsError(f"cannot read '{path}': {exc.strerror}") from None
    if head.startswith(b"PK\x03\x04") or head.startswith(
        b"\x80"
    ):  # torch.save: zip, or legacy pickle
        return "openai"
    if len(head) > 8 and head[8:9] == b"{":  # safetensors: u64 header size, then a JSON header
        return "safetensors"
    return "ctranslate2"
