"""max-whisper: OpenAI's Whisper speech recognition on Modular's MAX Graph."""
from .api import WhisperModel, load_model
from .decoding import DecodingOptions, DecodingResult

__version__ = "0.1.0"
__all__ = ["load_model", "WhisperModel", "DecodingOptions", "DecodingResult", "__version__"]
