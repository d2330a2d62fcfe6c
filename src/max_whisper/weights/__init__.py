"""Whisper weights from CTranslate2, openai-whisper or Hugging Face files, under openai-whisper
names.

`load_model_weights` (loader.py) finds the files, picks the reader for their format and returns a
`ModelWeights` (model_weights.py): dims plus a `{openai-whisper state_dict name: float32 array}`
dict that loads strictly into `whisper.model.Whisper(dims)`. Each reader (ctranslate2.py,
hf_safetensors.py, openai_checkpoint.py) turns its format into tensors under that format's own
names; a `WeightAdapter` table (adapter.py, one per format) renames them; `assemble` checks the
result against the shapes the dims call for (openai_schema.py). The named models and their
packages are in registry.py.
"""

from .adapter import Target, WeightAdapter
from .dtypes import as_float32, bfloat16_to_float32
from .errors import CorruptWeightsError, WeightsError
from .files import read_files, read_json
from .loader import load_model_weights
from .model_weights import ModelWeights
from .openai_schema import dims_from_params, expected_shapes, sinusoids
from .registry import DEFAULT_MODEL, NAMED_MODELS, ModelNotFoundError, NamedModel

__all__ = [
    "CorruptWeightsError",
    "DEFAULT_MODEL",
    "ModelNotFoundError",
    "ModelWeights",
    "NAMED_MODELS",
    "NamedModel",
    "Target",
    "WeightAdapter",
    "WeightsError",
    "as_float32",
    "bfloat16_to_float32",
    "dims_from_params",
    "expected_shapes",
    "load_model_weights",
    "read_files",
    "read_json",
    "sinusoids",
]
