"""The flags of `max-whisper transcribe` (openai-whisper's, with both spellings), and the
TranscribeOptions they make."""

from __future__ import annotations

import argparse

from .cli import OUTPUT_FORMATS, add_model_options, optional_float, str2bool
from .options import TranscribeOptions, fallback_temperatures
from .tokenizer import normalize_language


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "transcribe",
        help="transcribe audio files",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Transcribe audio files. Decoding defaults are openai-whisper's "
        "command line's: beam search of 5, temperature fallback with 5 samples.",
    )
    p.add_argument("audio", nargs="+", help="audio files or folders; - reads stdin")
    add_transcribe_options(p)
    from .transcribe_command import cmd_transcribe

    p.set_defaults(func=cmd_transcribe)


def add_transcribe_options(p: argparse.ArgumentParser, output_options: bool = True) -> None:
    """The model and transcription flags (and, with output_options, -f and -o)."""
    from .vad import VadOptions

    d, vd = TranscribeOptions.cli_defaults(), VadOptions()
    add_model_options(p)

    def option(name: str, help: str, **kwargs) -> None:
        """--name-with-dashes and openai-whisper's --name_with_underscores."""
        names = dict.fromkeys([f"--{name.replace('_', '-')}", f"--{name}"])
        p.add_argument(*kwargs.pop("short", ()), *names, help=help, **kwargs)

    def flag(name: str, help: str, default: bool) -> None:  # True/False, as openai-whisper takes it
        option(name, help, type=str2bool, nargs="?", const=True, default=default)

    none_float = {"type": optional_float}
    if output_options:
        option(
            "output_format",
            "write transcripts in this format (None: print them only)",
            short=("-f",),
            choices=OUTPUT_FORMATS,
            default=None,
        )
        option(
            "output_dir",
            "folder for the written files (None: the current folder, if -f is given)",
            short=("-o",),
            default=None,
        )
    option("language", "language code or name (None: detect)", default=d.language)
    option(
        "task",
        "translate: speech in any language to English text (multilingual models)",
        default=d.task,
        choices=("transcribe", "translate"),
    )
    option("temperature", "sampling temperature, 0 to 1", type=float, default=d.temperatures[0])
    option(
        "temperature_increment_on_fallback",
        "on a failed window, retry at this much higher temperature, up to 1; None: no retry",
        default=round(d.temperatures[1] - d.temperatures[0], 6),
        **none_float,
    )
    option("best_of", "samples per window at a temperature above 0", type=int, default=d.best_of)
    option("beam_size", "beams at temperature 0 (1: greedy)", type=int, default=d.beam_size)
    option("patience", "beam search patience (None: 1)", type=float, default=d.patience)
    option(
        "length_penalty",
        "rank beams by length-normalised log-probability with this alpha (None: plain length)",
        type=float,
        default=d.length_penalty,
    )
    option(
        "suppress_tokens",
        "comma-separated token ids never to sample; -1: the non-speech symbols",
        default=d.suppress_tokens,
    )
    option(
        "initial_prompt",
        "text before the first window (spellings, names, style)",
        default=d.initial_prompt,
    )
    flag(
        "carry_initial_prompt",
        "keep the initial prompt before every window's context",
        d.carry_initial_prompt,
    )
    option(
        "prepend_punctuations",
        "word timestamps: punctuation merged into the next word",
        default=d.prepend_punctuations,
    )
    option(
        "append_punctuations",
        "word timestamps: punctuation merged into the previous word",
        default=d.append_punctuations,
    )
    flag(
        "condition_on_previous_text",
        "feed each window the text before it",
        d.condition_on_previous_text,
    )
    option(
        "compression_ratio_threshold",
        "above this gzip ratio a window is retried",
        default=d.compression_ratio_threshold,
        **none_float,
    )
    option(
        "logprob_threshold",
        "below this mean log-probability a window is retried",
        default=d.logprob_threshold,
        **none_float,
    )
    option(
        "no_speech_threshold",
        "above this no-speech probability (and improbable) a window is skipped as silence",
        default=d.no_speech_threshold,
        **none_float,
    )
    flag("word_timestamps", "time every word (cross-attention alignment)", d.word_timestamps)
    option(
        "clip_timestamps",
        "start,end,start,end,... seconds to transcribe (0: all)",
        default=d.clip_timestamps,
    )
    option(
        "hallucination_silence_threshold",
        "with word timestamps: skip silences longer than this around a suspect segment",
        default=d.hallucination_silence_threshold,
        **none_float,
    )
    option(
        "silence_threshold",
        "skip 30-s windows whose peak level (dBFS) stays below this; None: off",
        default=d.silence_threshold,
        **none_float,
    )
    for name, what in (
        ("max_line_width", "characters a line"),
        ("max_line_count", "lines a cue"),
        ("max_words_per_line", "words a line"),
    ):
        option(
            name,
            f"subtitles with word timestamps: at most this many {what}",
            type=int,
            default=None,
        )
    flag(
        "highlight_words",
        "subtitles with word timestamps: underline each word as it is spoken",
        False,
    )
    flag("fp16", "accepted as openai-whisper takes it; the model computes in float32", True)
    option("threads", "CPU cores to run on (0: all of them)", type=int, default=0)
    option(
        "model_dir",
        "a folder holding the model's weights (the name given to --model, or "
        "NAME.pt); None: the bundled packages. Nothing is ever downloaded",
        default=None,
    )
    flag(
        "vad_filter",
        "transcribe only the speech Silero VAD finds (the vad extra): long "
        "silences cannot swallow the speech after them",
        d.vad_filter,
    )
    p.add_argument(
        "--vad",
        dest="vad_filter",
        type=str2bool,
        nargs="?",
        const=True,
        default=d.vad_filter,
        help="the same as --vad-filter",
    )
    option("vad_threshold", "VAD: speech probability threshold", type=float, default=vd.threshold)
    option(
        "vad_min_silence_ms",
        "VAD: silences shorter than this stay inside speech",
        type=float,
        default=vd.min_silence_duration_ms,
    )
    option(
        "vad_speech_pad_ms",
        "VAD: audio kept around each stretch",
        type=float,
        default=vd.speech_pad_ms,
    )
    option(
        "batch_size",
        "transcribe this many files at once, their windows decoded in one batch "
        "(the same text as one by one; faster on many files)",
        type=int,
        default=1,
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
    flag(
        "verbose",
        "True: print each segment with its times as it is decoded; False: print the "
        "text once a file is done",
        True,
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
