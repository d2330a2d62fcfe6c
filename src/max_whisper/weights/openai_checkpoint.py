"""openai-whisper `.pt` checkpoints: {"dims": {...}, "model_state_dict": {name: tensor}}.

The names are already openai-whisper's, so no adapter is needed. PyTorch is optional for this
project, so it is imported only here, when such a file is loaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..dims import ModelDimensions
from .errors import CorruptWeightsError, WeightsError
from .openai_schema import dims_from_params


def read_openai_checkpoint(paths: Sequence[Path]) -> tuple[dict[str, np.ndarray], ModelDimensions]:
    """Read an openai-whisper checkpoint, or a bare state dict (dims then come from the shapes)."""
    (path,) = paths
    try:
        import torch
    except ImportError:
        raise WeightsError(
            f"reading '{path}' needs PyTorch: pip install 'max-whisper[reference]' "
            "(or use a CTranslate2 or safetensors model)"
        ) from None
    try:
        # weights_only: a checkpoint is plain dicts and tensors, so never run pickled code.
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types (pickle, zip, runtime) for a bad file
        raise CorruptWeightsError(
            f"'{path}' is not a readable PyTorch checkpoint ({type(exc).__name__})"
        ) from None
    if not isinstance(checkpoint, dict):
        raise CorruptWeightsError(f"'{path}' does not hold a Whisper checkpoint")

    state = checkpoint.get("model_state_dict", checkpoint)
    params = {
        k: np.ascontiguousarray(v.detach().float().numpy())
        for k, v in state.items()
        if torch.is_tensor(v)
    }
    if "dims" not in checkpoint:
        return params, dims_from_params(params)
    try:
        dims = ModelDimensions(**checkpoint["dims"])
    except TypeError:
        raise CorruptWeightsError(f"'{path}' has malformed dims {checkpoint['dims']!r}") from None
    return params, dims
