"""`max-whisper bench`: speed, memory and accuracy of every backend, and of faster-whisper, on the
same clips.

The default mode (systems, run.py): each row is one engine (backend × device, or faster-whisper ×
compute type) × one model. A row runs a warm-up pass over all clips, then `repeats` timed passes; a
pass transcribes every clip once, one after the other. Wall time covers the mel spectrogram, the
encoder and the decoding loop (audio is decoded from the files once, before timing). RTFx = audio
seconds / median pass wall seconds.

The two phases are timed by a wrapper around the model's backend (`TimedBackend`, runners.py): every
`encode` call (-> encoder ms per 30-s window) and every decoder-session `logits` / `rearrange` call
(-> decoder ms per generated token, EOT included). faster-whisper is timed the same way through a
subclass that times its `encode` and `generate_with_fallback` methods (faster_whisper_runner.py).

Isolation: by default each row runs in its own fresh subprocess (worker.py), so that peak RSS (the
high-water mark of that process: interpreter, imports, weights, runs) belongs to that row alone, and
so that the model load time in it is a warm start (imports included). With `isolate=False` (the
tests) every row runs in this process on models it may already hold: RSS is then the process's
high-water mark, shared.

Everyone decodes with the same options: language en, temperature 0 with no fallback, greedy unless
--beam-size, no conditioning on previous text, timestamps on, no VAD.

The other modes time one part alone: `--mode stages` (stages.py: encoder ms per window, decoder ms
per token), `--mode compile` (compile_time.py: the MAX encoder's cold and warm start),
`--mode memory` (memory.py: peak RSS of one long transcription). See bench/README.md.
"""

from .cli import add_parsers, cmd_bench
from .clips import (
    AUDIO_EXTENSIONS,
    Clip,
    audio_files,
    default_audio,
    expand_audio,
    load_clips,
    long_form_file,
    read_references,
    references_near,
    score_row,
    text_normalizer,
    word_error_rate,
)
from .faster_whisper_runner import FasterWhisperRunner, faster_whisper_folder, join_model_parts
from .measure import measure, peak_rss_mb
from .plan import GpuInfo, detect_gpus, installed_models, plan_rows
from .report import markdown_table, write_chart
from .run import environment, run_bench
from .runners import Pass, PhaseTimes, TimedBackend, TimedDecoderSession, WhisperRunner, make_runner
from .settings import (
    DEFAULT_BACKENDS,
    DEFAULT_MODELS,
    LONG_FORM_PAUSES_S,
    LONG_FORM_SECONDS,
    SCHEMA,
    WORKLOADS,
    BenchError,
    DecodeSettings,
    Row,
)
from .worker import run_worker

__all__ = [
    "AUDIO_EXTENSIONS",
    "DEFAULT_BACKENDS",
    "DEFAULT_MODELS",
    "LONG_FORM_PAUSES_S",
    "LONG_FORM_SECONDS",
    "SCHEMA",
    "WORKLOADS",
    "BenchError",
    "Clip",
    "DecodeSettings",
    "FasterWhisperRunner",
    "GpuInfo",
    "Pass",
    "PhaseTimes",
    "Row",
    "TimedBackend",
    "TimedDecoderSession",
    "WhisperRunner",
    "add_parsers",
    "audio_files",
    "cmd_bench",
    "default_audio",
    "detect_gpus",
    "environment",
    "expand_audio",
    "faster_whisper_folder",
    "installed_models",
    "join_model_parts",
    "load_clips",
    "long_form_file",
    "make_runner",
    "markdown_table",
    "measure",
    "peak_rss_mb",
    "plan_rows",
    "read_references",
    "references_near",
    "run_bench",
    "run_worker",
    "score_row",
    "text_normalizer",
    "word_error_rate",
    "write_chart",
]
