"""max-whisper: OpenAI's Whisper speech recognition on Modular's MAX Graph."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# The public names and their modules, imported on first use: the command starts (and restarts on
# MAX's allocator) before numpy and the model code load.
_EXPORTS = {
    "load_model": ".api",
    "WhisperModel": ".api",
    "TranscribeOptions": ".options",
    "DecodingOptions": ".decoding",
    "DecodingResult": ".decoding",
    "MaxWhisperError": ".errors",
}
__all__ = [*_EXPORTS, "__version__"]

if TYPE_CHECKING:  # the same names, for type checkers
    from .api import WhisperModel, load_model  # noqa: F401
    from .decoding import DecodingOptions, DecodingResult  # noqa: F401
    from .errors import MaxWhisperError  # noqa: F401
    from .options import TranscribeOptions  # noqa: F401


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value
