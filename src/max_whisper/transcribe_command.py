"""`max-whisper transcribe`: files, folders or stdin in, transcripts out (openai-whisper's CLI)."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .dims import SAMPLE_RATE
from .errors import MaxWhisperError, UsageError
from .options import TranscribeOptions


def cmd_transcribe(args) -> int:
    from . import load_model
    from .inputs import expand_inputs, missing_input
    from .transcribe_args import transcribe_options
    from .writers import get_writer, prepare_output_dir

    options = transcribe_options(args)
    if args.encoder_float64_blocks < 0:
        raise UsageError("--encoder-float64-blocks must not be negative")
    paths = expand_inputs(args.audio)
    writer = None
    if args.output_format or args.output_dir:  # before any work: a bad folder fails now, not after
        writer = get_writer(args.output_format or "all", prepare_output_dir(args.output_dir or "."))
    total, failures = len(paths), 0
    for path in [p for p in paths if missing_input(p)]:  # reported before the model loads
        _report_failure(path, missing_input(path))
        failures += 1
    paths = [p for p in paths if not missing_input(p)]
    if paths:
        use_cores(args.threads)
        model = load_model(
            model_location(args.model, args.model_dir),
            backend=args.backend,
            device=args.device,
            encoder_float64_blocks=args.encoder_float64_blocks,
            warm_start=not args.wait_for_compile,
        )
        options = english_only(model, options)
        many = len(args.audio) > 1 or len(paths) > 1
        outputs = FileOutputs.from_args(args, writer, options.language, labelled=many)
        if args.batch_size > 1 and len(paths) > 1:
            return _finish(
                _transcribe_batched(model, paths, options, outputs, args) + failures, total
            )
        for path in paths:
            try:
                _transcribe_file(model, path, options, outputs, args)
            except (MaxWhisperError, OSError) as exc:  # this file is lost; the others go on
                _report_failure(path, _one_line(exc))
                failures += 1
    return _finish(failures, total)


def _finish(failures: int, total: int) -> int:
    if failures and total > 1:
        print(f"max-whisper: {failures} of {total} inputs failed", file=sys.stderr)
    return 1 if failures else 0


_print_now = functools.partial(print, flush=True)


@dataclass(frozen=True)
class FileOutputs:
    """What becomes of each input's transcript: its text on the console (unless --verbose showed
    each segment as it came; `labelled`: after the file's name) and the files asked for (-f, -o)."""

    writer: Callable | None
    writer_options: dict
    language: str | None
    verbose: bool
    labelled: bool

    @classmethod
    def from_args(
        cls, args, writer: Callable | None, language: str | None, labelled: bool
    ) -> FileOutputs:
        writer_options = {
            "max_line_width": args.max_line_width,
            "max_line_count": args.max_line_count,
            "max_words_per_line": args.max_words_per_line,
            "highlight_words": args.highlight_words,
        }
        return cls(writer, writer_options, language, args.verbose, labelled)

    def finished(self, name: str, result: dict, show: Callable[[str], None] = _print_now) -> None:
        if not self.verbose:
            show(self._line(name, result["text"]))
        if self.writer is not None:
            self.writer(result, name, self.writer_options)

    def interrupted(
        self, name: str, segments: list[dict], show: Callable[[str], None] = _print_now
    ) -> None:
        """The segments finished before the interrupt: `.partial` files where files were asked
        for, else their text."""
        if not segments:
            return
        text = "".join(s["text"] for s in segments)
        if self.writer is None:
            if not self.verbose:
                show(self._line(name, text))
            return
        partial = {
            "text": text,
            "segments": segments,
            "language": self.language,
            "incomplete": True,
        }
        written = self.writer(partial, name, self.writer_options, partial=True)
        where = ", ".join(written) if isinstance(written, list) else written
        print(
            f"max-whisper: interrupted: the {len(segments)} finished segments of {name} are in "
            f"{where}",
            file=sys.stderr,
        )

    def _line(self, name: str, text: str) -> str:
        return f"{name}: {text.strip()}" if self.labelled else text.strip()


def _transcribe_batched(
    model, paths: list[str], options: TranscribeOptions, outputs: FileOutputs, args
) -> int:
    """Every input through the batching engine at once (--batch-size windows at a time); each
    file's outputs are written as it finishes. Returns the number that failed."""
    import tempfile

    from .audio import audio_duration
    from .inputs import STDIN, stdin_to_file
    from .progress import ProgressBar

    names = ["stdin" if p == STDIN else p for p in paths]
    finished: dict[int, list[dict]] = {i: [] for i in range(len(paths))}
    failures = done_seconds = 0.0
    with tempfile.TemporaryDirectory(prefix="max-whisper-") as spool:
        sources = [stdin_to_file(spool) if p == STDIN else p for p in paths]
        durations = [_duration_or_zero(audio_duration, p) for p in sources]
        mode = ProgressBar.mode_for(not args.no_progress)
        try:
            with ProgressBar(total=sum(durations), mode=mode, desc=f"{len(paths)} files") as bar:

                def on_segment(index: int, segment: dict) -> None:
                    finished[index].append(segment)
                    if args.verbose:
                        bar.write(f"{names[index]}: {_segment_line(segment)}")

                for index, result in model.transcribe_many(
                    sources, options, batch_size=args.batch_size, on_segment=on_segment
                ):
                    done_seconds += durations[index]
                    bar.update_to(done_seconds, bar.total)
                    if isinstance(result, Exception):
                        if not isinstance(result, (MaxWhisperError, OSError)):
                            raise result
                        _report_failure(names[index], _one_line(result))
                        failures += 1
                        finished.pop(index)
                        continue
                    finished.pop(index)
                    outputs.finished(names[index], result, bar.write)
        except KeyboardInterrupt:
            for index, segments in finished.items():
                outputs.interrupted(names[index], segments)
            raise
    return int(failures)


def _duration_or_zero(audio_duration, path: str) -> float:
    try:
        return audio_duration(path)
    except (MaxWhisperError, OSError):
        return 0.0  # unreadable: its stream will say why


def _one_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def english_only(model, options: TranscribeOptions) -> TranscribeOptions:
    """On an English-only model: language "en", with a warning (as openai-whisper's) where the
    user asked for another language or for translation."""
    if model.is_multilingual:
        return options
    if options.language not in (None, "en"):
        _warn(
            f"{model.name} is an English-only model but received '{options.language}'; "
            "using English instead"
        )
    if options.task == "translate":
        _warn(
            f"{model.name} is an English-only model: it cannot translate; "
            "transcribing in English instead"
        )
    return options.replace(language="en", task="transcribe")


def model_location(model: str, model_dir: str | None) -> str:
    """--model as given, or its weights inside --model_dir (openai-whisper's <dir>/<name>.pt
    too)."""
    if model_dir is None:
        return model
    if not os.path.isdir(model_dir):
        raise UsageError(f"--model_dir '{model_dir}' is not a folder")
    for candidate in (os.path.join(model_dir, model), os.path.join(model_dir, f"{model}.pt")):
        if os.path.exists(candidate):
            return candidate
    return model  # a named model not in the folder: the bundled one


def use_cores(threads: int) -> None:
    """--threads N: run on N of this machine's cores (MAX's runtime sizes its pool by the CPU
    affinity)."""
    if threads < 0:
        raise UsageError("--threads must not be negative")
    available = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if threads and available and threads < len(available):
        os.sched_setaffinity(0, available[:threads])


def _warn(message: str) -> None:
    print(f"max-whisper: warning: {message}", file=sys.stderr, flush=True)


def _report_failure(path: str, message: str) -> None:
    print(
        f"max-whisper: error: {message}"
        if path in message
        else f"max-whisper: error: {path}: {message}",
        file=sys.stderr,
        flush=True,
    )


def _transcribe_file(
    model, path: str, options: TranscribeOptions, outputs: FileOutputs, args
) -> None:
    """One input, start to written output. On Ctrl-C, the segments finished so far are written
    (as `.partial` files where files were asked for) before the interrupt goes on."""
    import tempfile

    from .audio import load_audio
    from .audio_stream import StreamedAudio
    from .inputs import STDIN, stdin_to_file
    from .progress import ProgressBar

    name = "stdin" if path == STDIN else path
    with tempfile.TemporaryDirectory(prefix="max-whisper-") as spool:
        audio = (
            load_audio(stdin_to_file(spool))
            if path == STDIN  # a file: read window by window
            else StreamedAudio(path, n_mels=model.dims.n_mels)
        )
    finished: list[dict] = []
    mode = ProgressBar.mode_for(not args.no_progress)
    try:
        with ProgressBar(total=len(audio) / SAMPLE_RATE, mode=mode, desc=Path(name).name) as bar:

            def on_segment(segment: dict) -> None:
                finished.append(segment)
                if args.verbose:
                    bar.write(_segment_line(segment))

            result = model.transcribe(
                audio, options, on_progress=bar.update_to, on_segment=on_segment
            )
    except KeyboardInterrupt:
        outputs.interrupted(name, finished)
        raise
    outputs.finished(name, result)


def _segment_line(segment: dict) -> str:
    from .writers import format_timestamp

    return (
        f"[{format_timestamp(segment['start'])} --> {format_timestamp(segment['end'])}] "
        f"{segment['text']}"
    )
