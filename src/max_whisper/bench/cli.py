"""The `max-whisper bench` command: the systems comparison (default), or one of the other modes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..backends import DEVICES
from ..cli import add_command
from .settings import DEFAULT_BACKENDS, DEFAULT_MODELS, WORKLOADS, BenchError, log_to_stderr

MODES = ("systems", "stages", "compile", "memory")
# options that only one mode reads (their default is None: given or not is plain)
MODE_OPTIONS = {
    "stages": ("steps", "beam_rows", "idle"),
    "compile": ("float64_blocks",),
    "memory": ("minutes",),
}
SYSTEMS_ONLY = (
    "workloads",
    "beam_size",
    "condition_on_previous_text",
    "device",
    "cold",
    "in_process",
    "chart",
    "markdown",
    "from_json",
)


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def add_parsers(sub) -> None:
    p = add_command(
        sub,
        "bench",
        cmd_bench,
        help="benchmark backends and faster-whisper: speed, memory, WER",
        description="Benchmark each backend × model on the same clips: RTFx, phase times, "
        "peak RSS, load times and WER. Prints the results as JSON.",
    )
    p.add_argument(
        "--backends",
        type=_csv,
        default=None,
        help="comma-separated: max, hybrid, reference, faster-whisper (= -int8, -fp32 and "
        "-int8-batched, its BatchedInferencePipeline), faster-whisper-int8, faster-whisper-fp32, "
        "faster-whisper-int8-batched (default: all; unavailable ones are skipped)",
    )
    p.add_argument(
        "--models",
        type=_csv,
        default=None,
        help="comma-separated model names or paths "
        "(default: tiny.en,base; missing ones are skipped)",
    )
    p.add_argument(
        "--audio",
        nargs="+",
        default=None,
        metavar="FILE_OR_DIR",
        help="audio files or folders (default: ../shared/audio, else samples/sample.wav); "
        "a transcripts.tsv beside the clips gives references for WER",
    )
    p.add_argument(
        "--workloads",
        type=_csv,
        default=None,
        help="short (each clip alone), long (one file of minutes made of the clips with pauses); "
        "default both",
    )
    p.add_argument(
        "--repeats", type=int, default=None, help="timed passes after the warm-up (default 3)"
    )
    p.add_argument(
        "--beam-size", "--beam_size", type=int, default=None, help="1 = greedy (default)"
    )
    p.add_argument(
        "--condition-on-previous-text",
        "--condition_on_previous_text",
        action="store_true",
        help="each window prompted with the text before it, as the transcribe command does "
        "(default: off; BatchedInferencePipeline rows never are)",
    )
    p.add_argument(
        "--device",
        default=None,
        choices=DEVICES,
        help="auto: CPU rows plus GPU rows where a GPU exists",
    )
    p.add_argument(
        "--cold",
        action="store_true",
        help="also time a cold compile (fresh process, empty graph and MAX caches) "
        "for MAX rows: minutes",
    )
    p.add_argument(
        "--in-process",
        action="store_true",
        help="run every row in this process (faster; peak RSS then shared, no warm-start time)",
    )
    p.add_argument(
        "--json", dest="json_out", default=None, metavar="OUT", help="also write the JSON here"
    )
    p.add_argument("--chart", default=None, metavar="PNG", help="write a bar chart of RTFx here")
    p.add_argument(
        "--markdown", action="store_true", help="print a Markdown table instead of the JSON"
    )
    p.add_argument(
        "--from-json",
        default=None,
        metavar="FILE",
        help="don't run: render --markdown / --chart from an earlier --json file",
    )
    p.add_argument(
        "--mode",
        choices=MODES,
        default="systems",
        help="systems (default): the comparison above; stages: encoder ms / window and decoder "
        "ms / token of max and reference, each in its own process; compile: the MAX encoder's "
        "cold compile, warm start and ms / window; memory: peak RSS of one long transcription",
    )
    g = p.add_argument_group(
        "other modes",
        "--models, --backends, --audio (stages, compile: its first file is the timed window; "
        "memory: the clips to repeat), --repeats and --json apply too. stages: --repeats decodes "
        "and encoder windows (default 3), backends max and reference; compile: one model "
        "(default tiny.en), --repeats windows (default 5); "
        "memory: one model (default tiny.en) and one backend (default max)",
    )
    g.add_argument(
        "--steps", type=int, default=None, help="stages: tokens per timed decode (default 50)"
    )
    g.add_argument(
        "--beam-rows",
        type=int,
        default=None,
        metavar="N",
        help="stages: also time decodes of N rows per step, a beam's batch (default 5; 1: skip)",
    )
    g.add_argument(
        "--idle",
        type=float,
        default=None,
        metavar="FRACTION",
        help="stages: before each timed run wait (up to 120 s) "
        "until this share of the CPUs is idle",
    )
    g.add_argument(
        "--float64-blocks",
        type=int,
        default=None,
        metavar="N",
        help="compile: leading encoder blocks in float64 (default: the encoder's own choice)",
    )
    g.add_argument(
        "--minutes", type=float, default=None, help="memory: minutes of audio (default 60)"
    )


def cmd_bench(args) -> int:
    from ..errors import UsageError

    try:
        if args.mode != "systems":
            return _other_mode(args)
        return _systems(args)
    except BenchError as exc:
        raise UsageError(str(exc)) from None


def _write_json(doc: dict, json_out: str | None) -> str:
    """The document as JSON text, also written to `json_out` when given."""
    text = json.dumps(doc, indent=2)
    if json_out:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(text + "\n")
    return text


def _systems(args) -> int:
    from .report import markdown_table, write_chart
    from .run import run_bench

    for name in (n for options in MODE_OPTIONS.values() for n in options):
        if getattr(args, name) is not None:
            raise BenchError(f"--{name.replace('_', '-')} applies to --mode {_mode_of(name)} only")
    if args.from_json:
        doc = json.loads(Path(args.from_json).read_text())
    else:
        doc = run_bench(
            backends=_or(args.backends, DEFAULT_BACKENDS),
            models=_or(args.models, DEFAULT_MODELS),
            audio=args.audio,
            repeats=_or(args.repeats, 3),
            beam_size=_or(args.beam_size, 1),
            condition_on_previous_text=args.condition_on_previous_text,
            device=_or(args.device, "auto"),
            cold=args.cold,
            isolate=not args.in_process,
            workloads=_or(args.workloads, WORKLOADS),
        )
    text = _write_json(doc, None if args.from_json else args.json_out)
    if args.chart:
        write_chart(doc, args.chart)
    print(markdown_table(doc) if args.markdown else text, flush=True)
    if not doc["results"]:
        print("max-whisper bench: no row ran", file=sys.stderr)
        return 1
    if doc["errors"]:
        print(
            f"max-whisper bench: {len(doc['errors'])} row(s) failed: "
            + "; ".join(f"{e['backend']} × {e['model']}" for e in doc["errors"]),
            file=sys.stderr,
        )
        return 1
    return 0


def _other_mode(args) -> int:
    mode = args.mode
    for name in SYSTEMS_ONLY + tuple(
        n for m, options in MODE_OPTIONS.items() if m != mode for n in options
    ):
        if getattr(args, name) not in (None, False):
            raise BenchError(f"--{name.replace('_', '-')} does not apply to --mode {mode}")
    for name in ("repeats", "steps", "beam_rows"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise BenchError(f"--{name.replace('_', '-')} must be at least 1")
    clip = None
    if args.audio and mode != "memory":  # the timed window: the first file's
        from .clips import expand_audio

        clip = str(expand_audio(args.audio)[0])
    if mode == "stages":
        from .stages import run_stages, stage_backends

        doc = run_stages(
            _or(args.models, list(DEFAULT_MODELS)),
            stage_backends(args.backends),
            clip,
            steps=_or(args.steps, 50),
            runs=_or(args.repeats, 3),
            beam=_or(args.beam_rows, 5),
            encoder_runs=_or(args.repeats, 3),
            idle=_or(args.idle, 0.0),
            log=log_to_stderr,
        )
        failed = [
            f"{b} × {m['model']}: {m[b]['error']}"
            for m in doc["models"]
            for b in m
            if isinstance(m[b], dict) and "error" in m[b]
        ]
    elif mode == "compile":
        from .compile_time import run_compile

        if args.backends not in (None, ["max"]):
            raise BenchError("--mode compile times the MAX encoder: --backends max only")
        doc, failed = (
            run_compile(
                _one(args.models, "model", "tiny.en"),
                _or(args.repeats, 5),
                args.float64_blocks,
                clip,
            ),
            [],
        )
    else:
        from .memory import run_memory

        doc, failed = (
            run_memory(
                _or(args.minutes, 60.0),
                _one(args.models, "model", "tiny.en"),
                _one(args.backends, "backend", "max"),
                args.audio,
            ),
            [],
        )
    print(_write_json(doc, args.json_out), flush=True)
    if failed:
        print("max-whisper bench: failed: " + "; ".join(failed), file=sys.stderr)
        return 1
    return 0


def _or(value, default):
    return default if value is None else value


def _one(values: list[str] | None, what: str, default: str) -> str:
    if values is None:
        return default
    if len(values) != 1:
        raise BenchError(f"this mode takes one {what}, not {', '.join(values) or 'none'}")
    return values[0]


def _mode_of(option: str) -> str:
    return next(mode for mode, options in MODE_OPTIONS.items() if option in options)
