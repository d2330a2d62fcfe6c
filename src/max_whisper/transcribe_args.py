"""The flags of `max-whisper transcribe` (openai-whisper's, with both spellings), and the
TranscribeOptions they make."""

from __future__ import annotations

import argparse
import dataclasses

from .cli import OUTPUT_FORMATS, add_command, add_model_options, optional_float, str2bool
from .options import TranscribeOptions, fallback_temperatures
from .tokenizer import normalize_language

# (name, kind, help) of each --name-with-dashes / openai-whisper's --name_with_underscores.
# kind: the value's type (bool: True/False, as openai-whisper takes it; optional_float: a number
# or None), or the tuple of its choices. Each default is in `_defaults()`.
FLAGS = (
    (
        "output_format",
        OUTPUT_FORMATS,
        "write transcripts in this format (None: print them only)",
    ),
    (
        "output_dir",
        str,
        "folder for the written files (None: the current folder, if -f is given)",
    ),
    (
        "language",
        str,
        "language code or name (None: detect)",
    ),
    (
        "task",
        ("transcribe", "translate"),
        "translate: speech in any language to English text (multilingual models)",
    ),
    (
        "temperature",
        float,
        "sampling temperature, 0 to 1",
    ),
    (
        "temperature_increment_on_fallback",
        optional_float,
        "on a failed window, retry at this much higher temperature, up to 1; None: no retry",
    ),
    (
        "best_of",
        int,
        "samples per window at a temperature above 0",
    ),
    (
        "beam_size",
        int,
        "beams at temperature 0 (1: greedy)",
    ),
    (
        "patience",
        float,
        "beam search patience (None: 1)",
    ),
    (
        "length_penalty",
        float,
        "rank beams by length-normalised log-probability with this alpha (None: plain length)",
    ),
    (
        "suppress_tokens",
        str,
        "comma-separated token ids never to sample; -1: the non-speech symbols",
    ),
    (
        "initial_prompt",
        str,
        "text before the first window (spellings, names, style)",
    ),
    (
        "carry_initial_prompt",
        bool,
        "keep the initial prompt before every window's context",
    ),
    (
        "prepend_punctuations",
        str,
        "word timestamps: punctuation merged into the next word",
    ),
    (
        "append_punctuations",
        str,
        "word timestamps: punctuation merged into the previous word",
    ),
    (
        "condition_on_previous_text",
        bool,
        "feed each window the text before it",
    ),
    (
        "compression_ratio_threshold",
        optional_float,
        "above this gzip ratio a window is retried",
    ),
    (
        "logprob_threshold",
        optional_float,
        "below this mean log-probability a window is retried",
    ),
    (
        "no_speech_threshold",
        optional_float,
        "above this no-speech probability (and improbable) a window is skipped as silence",
    ),
    (
        "word_timestamps",
        bool,
        "time every word (cross-attention alignment)",
    ),
    (
        "clip_timestamps",
        str,
        "start,end,start,end,... seconds to transcribe (0: all)",
    ),
    (
        "hallucination_silence_threshold",
        optional_float,
        "with word timestamps: skip silences longer than this around a suspect segment",
    ),
    (
        "silence_threshold",
        optional_float,
        "skip 30-s windows whose peak level (dBFS) stays below this; None: off",
    ),
    (
        "max_line_width",
        int,
        "subtitles with word timestamps: at most this many characters a line",
    ),
    (
        "max_line_count",
        int,
        "subtitles with word timestamps: at most this many lines a cue",
    ),
    (
        "max_words_per_line",
        int,
        "subtitles with word timestamps: at most this many words a line",
    ),
    (
        "highlight_words",
        bool,
        "subtitles with word timestamps: underline each word as it is spoken",
    ),
    (
        "fp16",
        bool,
        "accepted as openai-whisper takes it; the model computes in float32",
    ),
    (
        "threads",
        int,
        "CPU cores to run on (0: all of them)",
    ),
    (
        "model_dir",
        str,
        "a folder holding the model's weights (the name given to --model, or NAME.pt); None: the "
        "bundled packages. Nothing is ever downloaded",
    ),
    (
        "vad_filter",
        bool,
        "transcribe only the speech Silero VAD finds (the vad extra): long silences cannot "
        "swallow the speech after them",
    ),
    (
        "vad_threshold",
        float,
        "VAD: speech probability threshold",
    ),
    (
        "vad_min_silence_ms",
        float,
        "VAD: silences shorter than this stay inside speech",
    ),
    (
        "vad_speech_pad_ms",
        float,
        "VAD: audio kept around each stretch",
    ),
    (
        "batch_size",
        int,
        "transcribe this many files at once, their windows decoded in one batch (the same text "
        "as one by one; faster on many files)",
    ),
    (
        "verbose",
        bool,
        "True: print each segment with its times as it is decoded; False: print the text once a "
        "file is done",
    ),
)
SHORT_NAMES = {"output_format": "-f", "output_dir": "-o"}


def _defaults() -> dict:
    """Each flag's default: the command line's TranscribeOptions and VadOptions, else the
    command's own."""
    from .vad import VadOptions

    d, vad = TranscribeOptions.cli_defaults(), VadOptions()
    return {
        **{field.name: getattr(d, field.name) for field in dataclasses.fields(d)},
        "temperature": d.temperatures[0],
        "temperature_increment_on_fallback": round(d.temperatures[1] - d.temperatures[0], 6),
        "vad_threshold": vad.threshold,
        "vad_min_silence_ms": vad.min_silence_duration_ms,
        "vad_speech_pad_ms": vad.speech_pad_ms,
        "highlight_words": False,
        "fp16": True,
        "threads": 0,
        "batch_size": 1,
        "verbose": True,
    }


def _kind_options(kind) -> dict:
    if kind is bool:
        return {"type": str2bool, "nargs": "?", "const": True}
    if kind is str:
        return {}
    return {"choices": kind} if isinstance(kind, tuple) else {"type": kind}


def add_parsers(sub) -> None:
    from .transcribe_command import cmd_transcribe

    p = add_command(
        sub,
        "transcribe",
        cmd_transcribe,
        help="transcribe audio files",
        description="Transcribe audio files. Decoding defaults are openai-whisper's "
        "command line's: beam search of 5, temperature fallback with 5 samples.",
        show_defaults=True,
    )
    p.add_argument("audio", nargs="+", help="audio files or folders; - reads stdin")
    add_transcribe_options(p)


def add_transcribe_options(p: argparse.ArgumentParser, output_options: bool = True) -> None:
    """The model and transcription flags (and, with output_options, -f and -o)."""
    add_model_options(p)
    defaults = _defaults()
    for name, kind, help in FLAGS:
        if name in SHORT_NAMES and not output_options:
            continue
        names = dict.fromkeys([f"--{name.replace('_', '-')}", f"--{name}"])
        short = (SHORT_NAMES[name],) if name in SHORT_NAMES else ()
        p.add_argument(*short, *names, help=help, default=defaults.get(name), **_kind_options(kind))
    p.add_argument(
        "--vad",
        dest="vad_filter",
        default=defaults["vad_filter"],
        help="the same as --vad-filter",
        **_kind_options(bool),
    )
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress (else a bar on a terminal, a line every 10 s in a log)",
    )
    p.add_argument(
        "--wait-for-compile",
        action="store_true",
        help="max backend, first run on a machine: wait for the MAX graphs to compile "
        "instead of running on NumPy while they compile in the background",
    )


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
        vad_filter=args.vad_filter,
        vad_options=_vad_options(args),
    )


def _vad_options(args):
    if not args.vad_filter:
        return None
    from .vad import VadOptions

    return VadOptions(
        threshold=args.vad_threshold,
        min_silence_duration_ms=args.vad_min_silence_ms,
        speech_pad_ms=args.vad_speech_pad_ms,
    )
