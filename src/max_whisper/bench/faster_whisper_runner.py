"""faster-whisper (CTranslate2) as a bench runner, on the same weight files as ours, its phases
timed."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from .runners import Pass, PhaseTimes
from .settings import BATCHED_SIZE, CT2_COMPUTE_TYPE, BenchError, DecodeSettings


def faster_whisper_folder(model_name: str, workdir: str | os.PathLike) -> Path:
    """A CTranslate2 folder faster-whisper can load, on the same files as our weights.

    A named model in one file is used in place; one split into parts (base) is joined once into
    `workdir` beside copies of its config.json, tokenizer.json and vocabulary.txt."""
    from ..weights.registry import NAMED_MODELS

    named = NAMED_MODELS.get(model_name)
    if named is None:
        p = Path(model_name).expanduser()
        folder = p if p.is_dir() else p.parent
        if not (folder / "model.bin").is_file():
            raise BenchError(
                "faster-whisper needs a CTranslate2 folder with model.bin; "
                f"'{model_name}' is not one"
            )
        return folder
    parts = named.locate()
    if len(parts) == 1:
        return parts[0].parent
    return join_model_parts(parts, Path(workdir) / f"ct2-{model_name}")


def join_model_parts(parts: list[Path], target: Path) -> Path:
    """model.bin in `target` from its parts in order, beside the first config.json, tokenizer.json
    and vocabulary.txt found next to the parts. Done once: an existing model.bin is kept."""
    if not (target / "model.bin").is_file():
        target.mkdir(parents=True, exist_ok=True)
        partial = target / "model.bin.partial"
        with open(partial, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    while chunk := f.read(1 << 24):
                        out.write(chunk)
        for extra in (
            "config.json",
            "tokenizer.json",
            "vocabulary.txt",
            "preprocessor_config.json",
        ):
            for part in parts:
                if (part.parent / extra).is_file():
                    (target / extra).write_bytes((part.parent / extra).read_bytes())
                    break
        partial.rename(target / "model.bin")
    return target


class FasterWhisperRunner:
    """faster-whisper (CTranslate2) on the same weights, with its encoder and decoding timed."""

    def __init__(
        self,
        folder: str | os.PathLike,
        compute_type: str,
        device: str = "cpu",
        settings: DecodeSettings = DecodeSettings(),
        batched: bool = False,
    ):
        self.folder, self.compute_type, self.device, self.settings = (
            str(folder),
            compute_type,
            device,
            settings,
        )
        self.batched = batched
        self.times = PhaseTimes()
        self.model = None
        self.pipeline = None

    def load(self) -> None:
        from faster_whisper import WhisperModel

        times = self.times

        class TimedWhisperModel(WhisperModel):
            def encode(self, features):
                start = time.perf_counter()
                out = super().encode(features)
                times.encoder_s += time.perf_counter() - start
                times.windows += 1 if features.ndim == 2 else int(features.shape[0])
                return out

            def generate_with_fallback(self, *args, **kwargs):
                start = time.perf_counter()
                out = super().generate_with_fallback(*args, **kwargs)
                times.decoder_s += time.perf_counter() - start
                result = out[0]
                times.tokens += len(result.sequences_ids[0]) + 1  # + EOT
                return out

        self.model = TimedWhisperModel(
            self.folder,
            device="cuda" if self.device == "gpu" else "cpu",
            compute_type=CT2_COMPUTE_TYPE[self.compute_type],
        )
        if self.batched:
            from faster_whisper import BatchedInferencePipeline

            self.pipeline = BatchedInferencePipeline(model=self.model)

    def transcribe(self, samples: np.ndarray, settings: DecodeSettings | None = None) -> Pass:
        """One clip, under `settings` (default: the runner's own)."""
        if self.model is None:
            self.load()
        settings = settings or self.settings
        self.times.reset()
        start = time.perf_counter()
        if (
            self.pipeline is not None
        ):  # its own VAD chunking; decodes a batch at once (not timed apart)
            options = {
                **settings.faster_whisper(),
                "vad_filter": True,
                "batch_size": BATCHED_SIZE,
            }
            options.pop("condition_on_previous_text")
            segments, _ = self.pipeline.transcribe(samples, **options)
        else:
            segments, _ = self.model.transcribe(samples, **settings.faster_whisper())
        # the generator does the work
        segments = [{"start": s.start, "end": s.end, "text": s.text} for s in segments]
        text = "".join(s["text"] for s in segments).strip()
        # the batched pipeline's decoding is not timed apart, nor its tokens counted
        return Pass.timed(
            text,
            time.perf_counter() - start,
            self.times,
            decoder_timed=self.pipeline is None,
            segments=segments,
        )
