"""max-whisper: OpenAI's Whisper speech recognition on Modular's MAX Graph."""

from .api import WhisperModel, load_model
from .decoding import DecodingOptions, DecodingResult
from .errors import MaxWhisperError
from .options import TranscribeOptions

__version__ = "0.1.0"
__all__ = [
    "load_model",
    "WhisperModel",
    "TranscribeOptions",
    "DecodingOptions",
    "DecodingResult",
    "MaxWhisperError",
    "__version__",
]
