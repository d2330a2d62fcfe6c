"""Output formats: txt, vtt, srt, tsv and json, byte for byte as openai-whisper writes them.

`get_writer(fmt, output_dir)(result, audio_path, options)` writes `<basename>.<ext>` into
output_dir; `render(result, fmt, options)` returns the same content as a string (for the HTTP
server).
Subtitle options (used when segments carry "words"): max_line_width, max_line_count,
max_words_per_line and highlight_words.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from typing import TextIO

from .errors import UsageError
from .timing import get_start

WORD_OPTIONS = ("max_line_width", "max_line_count", "max_words_per_line", "highlight_words")


def format_timestamp(
    seconds: float, always_include_hours: bool = False, decimal_marker: str = "."
) -> str:
    """[HH:]MM:SS.mmm, hours shown when non-zero or asked for."""
    if seconds < 0:
        raise ValueError(f"non-negative timestamp expected, got {seconds}")
    ms = round(seconds * 1000.0)
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1_000)
    hours_marker = f"{hours:02d}:" if always_include_hours or hours > 0 else ""
    return f"{hours_marker}{minutes:02d}:{secs:02d}{decimal_marker}{ms:03d}"


PARTIAL_SUFFIX = ".partial"  # an interrupted run's finished segments


def write_atomically(path: str | os.PathLike, text: str) -> None:
    """Write to a temporary file beside `path`, then rename it over `path`: never a
    half-written file."""
    folder = os.path.dirname(os.fspath(path)) or "."
    fd, tmp = tempfile.mkstemp(
        prefix=f".{os.path.basename(os.fspath(path))}.", suffix=".tmp", dir=folder
    )
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; an output file is not
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def prepare_output_dir(path: str | os.PathLike) -> str:
    """Create the output folder and prove it writable, before any work is spent on the audio."""
    path = os.fspath(path)
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise UsageError(
            f"cannot write to the output folder '{path}': {exc.strerror or exc}"
        ) from None
    return path


class ResultWriter:
    """Writes one transcription result in one format."""

    extension: str

    def __init__(self, output_dir: str | os.PathLike = "."):
        self.output_dir = os.fspath(output_dir)

    def __call__(
        self,
        result: dict,
        audio_path: str | os.PathLike,
        options: dict | None = None,
        partial: bool = False,
        **kwargs,
    ) -> str:
        """Write `<audio basename>.<ext>` into output_dir (`.<ext>.partial` for the segments of an
        interrupted run) and return its path. The file appears whole or not at all."""
        basename = os.path.splitext(os.path.basename(os.fspath(audio_path)))[0]
        path = os.path.join(
            self.output_dir, f"{basename}.{self.extension}" + (PARTIAL_SUFFIX if partial else "")
        )
        write_atomically(path, self.render(result, options, **kwargs))
        return path

    def render(self, result: dict, options: dict | None = None, **kwargs) -> str:
        buffer = io.StringIO()
        self.write(result, buffer, options, **kwargs)
        return buffer.getvalue()

    def write(self, result: dict, file: TextIO, options: dict | None = None, **kwargs) -> None:
        raise NotImplementedError


class TxtWriter(ResultWriter):
    extension = "txt"

    def write(self, result, file, options=None, **kwargs):
        for segment in result["segments"]:
            file.write(segment["text"].strip() + "\n")


class TsvWriter(ResultWriter):
    """start<TAB>end<TAB>text, times in integer milliseconds (no locale-dependent decimal mark)."""

    extension = "tsv"

    def write(self, result, file, options=None, **kwargs):
        file.write("start\tend\ttext\n")
        for segment in result["segments"]:
            text = segment["text"].strip().replace("\t", " ")
            file.write(
                f"{round(1000 * segment['start'])}\t{round(1000 * segment['end'])}\t{text}\n"
            )


class JsonWriter(ResultWriter):
    extension = "json"

    def write(self, result, file, options=None, **kwargs):
        json.dump(result, file)


class SubtitleWriter(ResultWriter):
    """Cues from segments, or, when segments carry words, from words laid out into lines."""

    always_include_hours: bool
    decimal_marker: str

    def timestamp(self, seconds: float) -> str:
        return format_timestamp(seconds, self.always_include_hours, self.decimal_marker)

    def cues(
        self, result: dict, options: dict | None = None, **kwargs
    ) -> Iterator[tuple[str, str, str]]:
        """(start, end, text) of each cue, timestamps already formatted."""
        options = options or {}
        opt = {name: kwargs.get(name) or options.get(name) for name in WORD_OPTIONS}
        segments = result["segments"]
        if not (segments and "words" in segments[0]):
            for segment in segments:
                yield (
                    self.timestamp(segment["start"]),
                    self.timestamp(segment["end"]),
                    segment["text"].strip().replace("-->", "->"),
                )
            return

        for subtitle in _layout_words(
            segments, opt["max_line_width"], opt["max_line_count"], opt["max_words_per_line"]
        ):
            start, end = self.timestamp(subtitle[0]["start"]), self.timestamp(subtitle[-1]["end"])
            text = "".join(word["word"] for word in subtitle)
            if not opt["highlight_words"]:
                yield start, end, text
                continue
            # one cue per word with that word underlined, plus plain cues filling the gaps
            last = start
            all_words = [word["word"] for word in subtitle]
            for i, word in enumerate(subtitle):
                word_start, word_end = self.timestamp(word["start"]), self.timestamp(word["end"])
                if last != word_start:
                    yield last, word_start, text
                yield (
                    word_start,
                    word_end,
                    "".join(
                        re.sub(r"^(\s*)(.*)$", r"\1<u>\2</u>", w) if j == i else w
                        for j, w in enumerate(all_words)
                    ),
                )
                last = word_end


def _layout_words(
    segments: list[dict],
    max_line_width: int | None,
    max_line_count: int | None,
    max_words_per_line: int | None,
) -> Iterator[list[dict]]:
    """Group word timings into subtitles (lists of copied word dicts whose "word" carries its
    leading space or a "\\n" line break). Without both a line width and a line count, each segment
    stays a subtitle of its own; with them, subtitles also break after long pauses and full line
    counts."""
    preserve_segments = max_line_count is None or max_line_width is None
    max_line_width = max_line_width or 1000
    max_words_per_line = max_words_per_line or 1000

    line_len = 0
    line_count = 1
    subtitle: list[dict] = []
    last = get_start(segments) or 0.0
    for segment in segments:
        words = segment["words"]
        for chunk_index in range(0, len(words), max_words_per_line):
            for i, original in enumerate(words[chunk_index : chunk_index + max_words_per_line]):
                timing = original.copy()
                long_pause = not preserve_segments and timing["start"] - last > 3.0
                has_room = line_len + len(timing["word"]) <= max_line_width
                seg_break = i == 0 and len(subtitle) > 0 and preserve_segments
                if line_len > 0 and has_room and not long_pause and not seg_break:
                    line_len += len(timing["word"])  # same line
                else:
                    timing["word"] = timing["word"].strip()
                    if (
                        len(subtitle) > 0
                        and max_line_count is not None
                        and (long_pause or line_count >= max_line_count)
                    ) or seg_break:
                        yield subtitle  # new subtitle
                        subtitle = []
                        line_count = 1
                    elif line_len > 0:
                        line_count += 1  # new line in this subtitle
                        timing["word"] = "\n" + timing["word"]
                    line_len = len(timing["word"].strip())
                subtitle.append(timing)
                last = timing["start"]
    if subtitle:
        yield subtitle


class VttWriter(SubtitleWriter):
    extension = "vtt"
    always_include_hours = False
    decimal_marker = "."

    def write(self, result, file, options=None, **kwargs):
        file.write("WEBVTT\n\n")
        for start, end, text in self.cues(result, options, **kwargs):
            file.write(f"{start} --> {end}\n{text}\n\n")


class SrtWriter(SubtitleWriter):
    extension = "srt"
    always_include_hours = True
    decimal_marker = ","

    def write(self, result, file, options=None, **kwargs):
        for i, (start, end, text) in enumerate(self.cues(result, options, **kwargs), start=1):
            file.write(f"{i}\n{start} --> {end}\n{text}\n\n")


WRITERS: dict[str, type[ResultWriter]] = {
    "txt": TxtWriter,
    "vtt": VttWriter,
    "srt": SrtWriter,
    "tsv": TsvWriter,
    "json": JsonWriter,
}
FORMATS = (*WRITERS, "all")
_ALIASES = {"text": "txt"}


def _writer_class(fmt: str) -> type[ResultWriter]:
    name = _ALIASES.get(fmt.lower(), fmt.lower())
    if name not in WRITERS:
        raise UsageError(f"unknown output format '{fmt}' (choose from {', '.join(FORMATS)})")
    return WRITERS[name]


def get_writer(output_format: str, output_dir: str | os.PathLike) -> Callable[..., object]:
    """A callable (result, audio_path, options=None, **word_options) writing one format, or all
    five for "all"."""
    if output_format.lower() == "all":
        writers = [cls(output_dir) for cls in WRITERS.values()]

        def write_all(
            result: dict,
            audio_path: str | os.PathLike,
            options: dict | None = None,
            partial: bool = False,
            **kwargs,
        ) -> list[str]:
            return [writer(result, audio_path, options, partial, **kwargs) for writer in writers]

        return write_all
    return _writer_class(output_format)(output_dir)


def render(result: dict, fmt: str, options: dict | None = None, **kwargs) -> str:
    """The file content of format `fmt` ("txt"/"text", "vtt", "srt", "tsv", "json") as a string."""
    return _writer_class(fmt)().render(result, options, **kwargs)
