"""`WeightAdapter`: one format's tensor names -> openai-whisper names, as a table."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from .dtypes import as_float32
from .errors import CorruptWeightsError

# What a source tensor becomes: an openai-whisper name; a tuple of names for a fused tensor, split
# into equal blocks of rows (None drops a block); or None to drop the tensor.
Target = str | tuple[str | None, ...] | None


@dataclass(frozen=True)
class WeightAdapter:
    """One format's tensor names -> openai-whisper names, as a table.

    `block` matches the name of a tensor inside a transformer block, with groups `side`
    ("encoder"/"decoder"), `index` and `rest`; `layer` maps `rest` to the name after
    "<side>.blocks.<index>.". `top` maps every other name. Names in neither table are ignored
    (settings, a tied output projection); `assemble` reports any tensor that is then missing.
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
                    f"tensor '{name}' has shape {value.shape}, "
                    f"not {len(targets)} equal blocks of rows"
                )
            for dst, part in zip(targets, np.split(value, len(targets), axis=0)):
                if dst is not None:
                    params[prefix + dst] = as_float32(part)
        return params
