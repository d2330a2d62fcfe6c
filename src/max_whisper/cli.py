"""The `max-whisper` command: transcribe | compare | doctor | bench | demo | serve."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from pathlib import Path

from .backends import BACKENDS, DEFAULT_BACKEND, DEVICES, UnknownBackend, normalize_device
from .dims import SAMPLE_RATE
from .errors import MaxWhisperError, UsageError
from .options import TranscribeOptions, fallback_temperatures
from .tokenizer import normalize_language
from .weights.registry import DEFAULT_MODEL

OUTPUT_FORMATS = ("txt", "vtt", "srt", "tsv", "json", "all")


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but usage errors are one line, like every other error of this command."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def add_model_options(
    p: argparse.ArgumentParser, backend_default: str | None = DEFAULT_BACKEND
) -> None:
    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="tiny.en, base, or a path to CTranslate2 / OpenAI .pt / HF safetensors weights",
    )
    if backend_default is not None:
        p.add_argument(
            "--backend",
            default=backend_default,
            choices=BACKENDS,
            help="max: the whole model in MAX; hybrid: MAX encoder + PyTorch decoder; "
            "reference: openai-whisper's PyTorch model",
        )
    p.add_argument(
        "--device",
        default="auto",
        type=_device,
        metavar="{" + ",".join(DEVICES) + ",cuda}",
        help="where the model runs (auto: the GPU if there is one)",
    )
    p.add_argument(
        "--encoder-float64-blocks",
        type=int,
        default=0,
        metavar="N",
        help="MAX encoder: compute the first N blocks in float64 (nearer the exact features; "
        "each such block costs about twice a float32 one)",
    )


def _device(value: str) -> str:
    try:
        return normalize_device(value)
    except UnknownBackend as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _optional_float(value: str) -> float | None:
    return None if value.lower() == "none" else float(value)


def _str2bool(value: str) -> bool:
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got '{value}'")


def add_transcribe_parser(sub) -> None:
    from .vad import VadOptions

    d, vd = TranscribeOptions.cli_defaults(), VadOptions()
    p = sub.add_parser(
        "transcribe",
        help="transcribe audio files",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Transcribe audio files. Decoding defaults are openai-whisper's "
        "command line's: beam search of 5, temperature fallback with 5 samples.",
    )
    p.add_argument("audio", nargs="+", help="audio files (wav, flac, mp3, ogg, m4a, ...)")
    add_model_options(p)
    p.add_argument(
        "-f",
        "--output-format",
        "--output_format",
        choices=OUTPUT_FORMATS,
        default=None,
        help="write transcripts in this format (None: print them only)",
    )
    p.add_argument(
        "-o",
        "--output-dir",
        "--output_dir",
        default=None,
        help="folder for the written files (None: the current folder, if -f is given)",
    )
    p.add_argument("--language", default=d.language, help="language code or name (None: detect)")
    p.add_argument(
        "--task",
        default=d.task,
        choices=("transcribe", "translate"),
        help="translate: speech in any language to English text (multilingual models)",
    )
    p.add_argument(
        "--temperature", type=float, default=d.temperatures[0], help="sampling temperature, 0 to 1"
    )
    p.add_argument(
        "--temperature-increment-on-fallback",
        "--temperature_increment_on_fallback",
        type=_optional_float,
        default=round(d.temperatures[1] - d.temperatures[0], 6),
        help="on a failed window, retry at this much higher temperature, up to 1; None: no retry",
    )
    p.add_argument(
        "--best-of",
        "--best_of",
        type=int,
        default=d.best_of,
        help="samples per window at a temperature above 0",
    )
    p.add_argument(
        "--beam-size",
        "--beam_size",
        type=int,
        default=d.beam_size,
        help="beams at temperature 0 (1: greedy)",
    )
    p.add_argument(
        "--patience", type=float, default=d.patience, help="beam search patience (None: 1)"
    )
    p.add_argument(
        "--length-penalty",
        "--length_penalty",
        type=float,
        default=d.length_penalty,
        help="rank beams by length-normalised log-probability with this alpha (None: plain length)",
    )
    p.add_argument(
        "--suppress-tokens",
        "--suppress_tokens",
        default=d.suppress_tokens,
        help="comma-separated token ids never to sample; -1: the non-speech symbols",
    )
    p.add_argument(
        "--initial-prompt",
        "--initial_prompt",
        default=d.initial_prompt,
        help="text before the first window (spellings, names, style)",
    )
    p.add_argument(
        "--carry-initial-prompt",
        "--carry_initial_prompt",
        type=_str2bool,
        default=d.carry_initial_prompt,
        help="keep the initial prompt before every window's context",
    )
    p.add_argument(
        "--prepend-punctuations",
        "--prepend_punctuations",
        default=d.prepend_punctuations,
        help="word timestamps: punctuation merged into the next word",
    )
    p.add_argument(
        "--append-punctuations",
        "--append_punctuations",
        default=d.append_punctuations,
        help="word timestamps: punctuation merged into the previous word",
    )
    p.add_argument(
        "--condition-on-previous-text",
        "--condition_on_previous_text",
        type=_str2bool,
        default=d.condition_on_previous_text,
        help="feed each window the text before it",
    )
    p.add_argument(
        "--compression-ratio-threshold",
        "--compression_ratio_threshold",
        type=_optional_float,
        default=d.compression_ratio_threshold,
        help="above this gzip ratio a window is retried",
    )
    p.add_argument(
        "--logprob-threshold",
        "--logprob_threshold",
        type=_optional_float,
        default=d.logprob_threshold,
        help="below this mean log-probability a window is retried",
    )
    p.add_argument(
        "--no-speech-threshold",
        "--no_speech_threshold",
        type=_optional_float,
        default=d.no_speech_threshold,
        help="above this no-speech probability (and improbable) a window is skipped as silence",
    )
    p.add_argument(
        "--word-timestamps",
        "--word_timestamps",
        type=_str2bool,
        default=d.word_timestamps,
        help="time every word (cross-attention alignment)",
    )
    p.add_argument(
        "--clip-timestamps",
        "--clip_timestamps",
        default=d.clip_timestamps,
        help="start,end,start,end,... seconds to transcribe (0: all)",
    )
    p.add_argument(
        "--hallucination-silence-threshold",
        "--hallucination_silence_threshold",
        type=_optional_float,
        default=d.hallucination_silence_threshold,
        help="with word timestamps: skip silences longer than this around a suspect segment",
    )
    p.add_argument(
        "--silence-threshold",
        "--silence_threshold",
        type=_optional_float,
        default=d.silence_threshold,
        help="skip 30-s windows whose peak level (dBFS) stays below this; None: off",
    )
    p.add_argument(
        "--max-line-width",
        "--max_line_width",
        type=int,
        default=None,
        help="subtitles with word timestamps: at most this many characters a line",
    )
    p.add_argument(
        "--max-line-count",
        "--max_line_count",
        type=int,
        default=None,
        help="subtitles with word timestamps: at most this many lines a cue",
    )
    p.add_argument(
        "--max-words-per-line",
        "--max_words_per_line",
        type=int,
        default=None,
        help="subtitles with word timestamps: at most this many words a line",
    )
    p.add_argument(
        "--highlight-words",
        "--highlight_words",
        type=_str2bool,
        default=False,
        help="subtitles with word timestamps: underline each word as it is spoken",
    )
    p.add_argument(
        "--fp16",
        type=_str2bool,
        default=True,
        help="accepted as openai-whisper takes it; the model computes in float32 everywhere",
    )
    p.add_argument(
        "--threads", type=int, default=0, help="CPU cores to run on (default 0: all of them)"
    )
    p.add_argument(
        "--model-dir",
        "--model_dir",
        default=None,
        help="a folder holding the model's weights (the name given to --model, or NAME.pt); "
        "default: the bundled packages. Nothing is ever downloaded",
    )
    p.add_argument(
        "--vad",
        "--vad-filter",
        "--vad_filter",
        dest="vad",
        type=_str2bool,
        nargs="?",
        const=True,
        default=d.vad_filter,
        help="transcribe only the speech Silero VAD finds (the vad extra): "
        "long silences cannot swallow the speech after them",
    )
    p.add_argument(
        "--vad-threshold",
        type=float,
        default=vd.threshold,
        help="VAD: speech probability threshold",
    )
    p.add_argument(
        "--vad-min-silence-ms",
        type=float,
        default=vd.min_silence_duration_ms,
        help="VAD: silences shorter than this stay inside speech",
    )
    p.add_argument(
        "--vad-speech-pad-ms",
        type=float,
        default=vd.speech_pad_ms,
        help="VAD: audio kept around each stretch",
    )
    p.add_argument(
        "--batch-size",
        "--batch_size",
        type=int,
        default=1,
        help="transcribe this many files at once, their windows decoded in one batch "
        "(the same text as one by one; faster on many files)",
    )
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress (else a bar on a terminal, a line every 10 s in a log)",
    )
    p.add_argument(
        "--wait-for-compile",
        action="store_true",
        help="max backend, first run on a machine: wait for the MAX graphs to compile instead of "
        "running on NumPy while they compile in the background",
    )
    p.add_argument(
        "--verbose",
        type=_str2bool,
        nargs="?",
        const=True,
        default=True,
        help="True (default): print each segment with its times as it is decoded; "
        "False: print the text once a file is done",
    )
    p.set_defaults(func=cmd_transcribe)


def transcribe_options(args) -> TranscribeOptions:
    """The CLI's flags as one TranscribeOptions (validated there: bad values are a UsageError)."""
    return TranscribeOptions.cli_defaults(
        task=args.task,
        language=normalize_language(args.language),
        temperature=fallback_temperatures(args.temperature, args.temperature_increment_on_fallback),
        best_of=args.best_of,
        beam_size=args.beam_size,
        patience=args.patience,
        length_penalty=args.length_penalty,
        suppress_tokens=args.suppress_tokens,
        initial_prompt=args.initial_prompt,
        carry_initial_prompt=args.carry_initial_prompt,
        prepend_punctuations=args.prepend_punctuations,
        append_punctuations=args.append_punctuations,
        condition_on_previous_text=args.condition_on_previous_text,
        compression_ratio_threshold=args.compression_ratio_threshold,
        logprob_threshold=args.logprob_threshold,
        no_speech_threshold=args.no_speech_threshold,
        word_timestamps=args.word_timestamps,
        clip_timestamps=args.clip_timestamps,
        hallucination_silence_threshold=args.hallucination_silence_threshold,
        silence_threshold=args.silence_threshold,
        vad_filter=args.vad,
        vad_options=_vad_options(args),
    )


def _vad_options(args):
    if not args.vad:
        return None
    from .vad import VadOptions

    return VadOptions(
        threshold=args.vad_threshold,
        min_silence_duration_ms=args.vad_min_silence_ms,
        speech_pad_ms=args.vad_speech_pad_ms,
    )


def cmd_transcribe(args) -> int:
    from . import load_model
    from .inputs import expand_inputs, missing_input
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
        if args.batch_size > 1 and len(paths) > 1:
            return _finish(
                _transcribe_batched(model, paths, options, writer, args) + failures, total
            )
        for path in paths:
            try:
                _transcribe_file(
                    model, path, options, writer, args, many=len(args.audio) > 1 or len(paths) > 1
                )
            except (MaxWhisperError, OSError) as exc:  # this file is lost; the others go on
                _report_failure(path, _one_line(exc))
                failures += 1
    return _finish(failures, total)


def _finish(failures: int, total: int) -> int:
    if failures and total > 1:
        print(f"max-whisper: {failures} of {total} inputs failed", file=sys.stderr)
    return 1 if failures else 0


def _transcribe_batched(model, paths: list[str], options: TranscribeOptions, writer, args) -> int:
    """Every input through the batching engine at once (--batch-size windows at a time); each
    file's outputs are written as it finishes. Returns the number that failed."""
    import tempfile

    from .audio import audio_duration
    from .inputs import STDIN, stdin_to_file
    from .progress import ProgressBar

    writer_options = _writer_options(args)
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
                    if not args.verbose:
                        bar.write(f"{names[index]}: {result['text'].strip()}")
                    if writer is not None:
                        writer(result, names[index], writer_options)
        except KeyboardInterrupt:
            for index, segments in finished.items():
                _write_partial(names[index], segments, options, writer, writer_options)
            raise
    return int(failures)


def _duration_or_zero(audio_duration, path: str) -> float:
    try:
        return audio_duration(path)
    except (MaxWhisperError, OSError):
        return 0.0  # unreadable: its stream will say why


def _one_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _writer_options(args) -> dict:
    return {
        "max_line_width": args.max_line_width,
        "max_line_count": args.max_line_count,
        "max_words_per_line": args.max_words_per_line,
        "highlight_words": args.highlight_words,
    }


def _write_partial(
    name: str, segments: list[dict], options: TranscribeOptions, writer, writer_options
) -> None:
    """An interrupted file's finished segments, as `.partial` files where files were asked for."""
    if writer is None or not segments:
        return
    partial = {
        "text": "".join(s["text"] for s in segments),
        "segments": segments,
        "language": options.language,
        "incomplete": True,
    }
    written = writer(partial, name, writer_options, partial=True)
    where = ", ".join(written) if isinstance(written, list) else written
    print(
        f"max-whisper: interrupted: the {len(segments)} finished segments of {name} are in {where}",
        file=sys.stderr,
    )


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
    model, path: str, options: TranscribeOptions, writer, args, many: bool
) -> None:
    """One input, start to written output. On Ctrl-C, the segments finished so far are written
    (as `.partial` files where files were asked for) before the interrupt goes on."""
    import tempfile

    from .audio import StreamedAudio, load_audio
    from .inputs import STDIN, stdin_to_file
    from .progress import ProgressBar

    name = "stdin" if path == STDIN else path
    with tempfile.TemporaryDirectory(prefix="max-whisper-") as spool:
        audio = (
            load_audio(stdin_to_file(spool))
            if path == STDIN  # a file: read window by window
            else StreamedAudio(path, n_mels=model.dims.n_mels)
        )
    writer_options = _writer_options(args)
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
        _write_partial(name, finished, options, writer, writer_options)
        if writer is None and finished and not args.verbose:
            print("".join(s["text"] for s in finished).strip(), flush=True)
        raise
    if not args.verbose:
        text = result["text"].strip()
        print(f"{name}: {text}" if many else text, flush=True)
    if writer is not None:
        writer(result, name, writer_options)


def _segment_line(segment: dict) -> str:
    from .writers import format_timestamp

    return (
        f"[{format_timestamp(segment['start'])} --> {format_timestamp(segment['end'])}] "
        f"{segment['text']}"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="max-whisper", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=ArgumentParser)
    sub.required = True
    add_transcribe_parser(sub)
    for module in ("diagnostics", "bench", "demo", "server"):
        # No try: these import optional extras only when run (one-line UsageError), so an
        # ImportError here is a bug in our own code and must not silently drop the subcommand.
        importlib.import_module(f".{module}", __package__).add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        print("max-whisper: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # one line for the user; --debug for the traceback
        if args.debug:
            traceback.print_exc()
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        # MaxWhisperError: ours, user-fixable. OSError: from the OS (missing file, permission,
        # disk full).
        if not isinstance(exc, (MaxWhisperError, OSError)):
            message = f"{type(exc).__name__}: {message} (run with --debug for details)"
        print(f"max-whisper: error: {message}", file=sys.stderr)
        return 2 if isinstance(exc, UsageError) else 1  # 2: a bad option, as argparse says it


if __name__ == "__main__":
    sys.exit(main())
