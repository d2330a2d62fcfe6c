"""The clips the bench transcribes: finding audio, its reference transcripts, the long-form file,
and WER."""

from __future__ import annotations

import csv
import os
import wave
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..dims import SAMPLE_RATE
from .settings import LONG_FORM_PAUSES_S, LONG_FORM_SECONDS, BenchError

AUDIO_EXTENSIONS = {".wav", ".flac", ".mp3", ".ogg", ".m4a", ".opus", ".webm"}
REFERENCES_FILE = "transcripts.tsv"  # columns file, reference; beside the clips
REPO_ROOT = Path(__file__).resolve().parents[3]  # the checkout (src/max_whisper/bench/clips.py)
SHARED_AUDIO = REPO_ROOT.parent / "shared" / "audio"
DEFAULT_CLIP = "librivox-0870.wav"  # the one window the stage and compile timings encode


@dataclass
class Clip:
    path: str
    seconds: float
    reference: str | None = None
    samples: np.ndarray | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return Path(self.path).name


# -- finding audio and references ------------------------------------------------------------------
def audio_files(folder: Path) -> list[Path]:
    """The audio files in `folder`, sorted by name; [] when the folder is absent."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(
        q for q in folder.iterdir() if q.suffix.lower() in AUDIO_EXTENSIONS and q.is_file()
    )


def read_references(folder: Path) -> dict[str, str]:
    """{file name: reference} from the folder's transcripts.tsv (columns file, reference); {}
    when absent."""
    tsv = Path(folder) / REFERENCES_FILE
    if not tsv.is_file():
        return {}
    with open(tsv, newline="", encoding="utf-8") as f:
        return {
            row["file"]: row["reference"]
            for row in csv.DictReader(f, delimiter="\t")
            if row.get("file") and row.get("reference")
        }


def references_near(path: Path) -> dict[str, str]:
    """{file name: reference} from a transcripts.tsv beside the clip."""
    return read_references(Path(path).parent)


def default_audio() -> list[str]:
    """../shared/audio beside the checkout when present, else the bundled sample."""
    for candidate in (SHARED_AUDIO, REPO_ROOT / "samples" / "sample.wav"):
        if candidate.exists():
            return [str(candidate)]
    return []


def default_clip() -> Path:
    return SHARED_AUDIO / DEFAULT_CLIP


def expand_audio(items: Iterable[str]) -> list[Path]:
    """Files as given; folders expand to their audio files, sorted by name."""
    paths: list[Path] = []
    for item in items:
        p = Path(item).expanduser()
        if p.is_dir():
            paths += audio_files(p)
        elif p.is_file():
            paths.append(p)
        else:
            raise BenchError(f"no such audio file or folder: {item}")
    if not paths:
        raise BenchError("no audio files to benchmark")
    return paths


# -- loading ---------------------------------------------------------------------------------------
def load_clips(paths: Iterable[Path | str], with_samples: bool = True) -> list[Clip]:
    from ..audio import load_audio

    clips, refs_cache = [], {}
    for p in map(Path, paths):
        if p.parent not in refs_cache:
            refs_cache[p.parent] = references_near(p)
        samples = load_audio(p)
        clips.append(
            Clip(
                str(p),
                len(samples) / SAMPLE_RATE,
                refs_cache[p.parent].get(p.name),
                samples if with_samples else None,
            )
        )
    return clips


def long_form_audio(
    clips: list[np.ndarray], seconds: float, pauses: tuple[float, ...] = LONG_FORM_PAUSES_S
) -> np.ndarray:
    """The clips in turn, each followed by a pause (`pauses` in turn), repeated until it lasts at
    least `seconds`."""
    order = _long_form_order([len(c) for c in clips], seconds, pauses)
    return np.concatenate(
        [part for k, pause in order for part in (clips[k], np.zeros(pause, np.float32))]
    )


def _long_form_order(
    lengths: list[int], seconds: float, pauses: tuple[float, ...]
) -> list[tuple[int, int]]:
    """(clip index, samples of the pause after it) for each piece of the long-form audio."""
    order, total, i = [], 0, 0
    while total < seconds * SAMPLE_RATE:
        pause = int(pauses[i % len(pauses)] * SAMPLE_RATE)
        order.append((i % len(lengths), pause))
        total += lengths[i % len(lengths)] + pause
        i += 1
    return order


def long_form_file(
    paths: list[Path], folder: str | os.PathLike, seconds: float = LONG_FORM_SECONDS
) -> Path:
    """One 16 kHz WAV made of the clips in turn with pauses between them (LONG_FORM_PAUSES_S),
    repeated until it lasts `seconds`: the long-form workload (the 30-s seek loop over speech and
    silences). Its clips are those with a reference (all of them when none has one), and then a
    transcripts.tsv beside it gives its reference, theirs in turn, for its WER."""
    from ..audio import load_audio

    references = {p: references_near(p).get(Path(p).name) for p in map(Path, paths)}
    pieces = [p for p, reference in references.items() if reference] or list(references)
    clips = [load_audio(p) for p in pieces]
    order = _long_form_order([len(c) for c in clips], seconds, LONG_FORM_PAUSES_S)
    audio = long_form_audio(clips, seconds)
    path = Path(folder) / f"long-form-{round(len(audio) / SAMPLE_RATE)}s.wav"
    write_wav(path, audio)
    if all(references[p] for p in pieces):
        with open(Path(folder) / REFERENCES_FILE, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, delimiter="\t")
            writer.writerow(["file", "reference"])
            writer.writerow([path.name, " ".join(references[pieces[k]] for k, _ in order)])
    return path


def window_mel(n_mels: int, clip: str | os.PathLike | None = None) -> np.ndarray:
    """[1, n_mels, 3000]: the log-Mel spectrogram of the first 30-s window of `clip` (default:
    DEFAULT_CLIP in ../shared/audio), or of 5 s of silence where that file is absent."""
    from ..audio import first_window_mel, load_audio

    path = Path(clip) if clip is not None else default_clip()
    audio = load_audio(path) if path.is_file() else np.zeros(5 * SAMPLE_RATE, np.float32)
    return first_window_mel(audio, n_mels)[None]


def write_wav(path: str | os.PathLike, audio: np.ndarray) -> None:
    """16-bit mono WAV at 16 kHz of float samples in [-1, 1]."""
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(SAMPLE_RATE)
        f.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())


# -- WER -------------------------------------------------------------------------------------------
def text_normalizer() -> tuple[str, Callable[[str], str]]:
    """Whisper's English normaliser when openai-whisper is installed, else lowercase without
    punctuation."""
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
            for op, i1, i2, j1, j2 in difflib.SequenceMatcher(
                a=r, b=h, autojunk=False
            ).get_opcodes():
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
