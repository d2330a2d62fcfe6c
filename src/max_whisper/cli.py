"""The `max-whisper` command: transcribe | batch | compare | doctor | warmup | bench | demo |
serve | live."""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback

from .backends import BACKENDS, DEFAULT_BACKEND, DEVICES, UnknownBackend, normalize_device
from .errors import MaxWhisperError, UsageError
from .weights.registry import DEFAULT_MODEL

OUTPUT_FORMATS = ("txt", "vtt", "srt", "tsv", "json", "all")


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but usage errors are one line, like every other error of this command."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def add_command(
    sub, name: str, run, help: str, description: str | None = None, show_defaults: bool = False
) -> argparse.ArgumentParser:
    """The parser of subcommand `name`, which `run(args)` carries out (`show_defaults`: --help
    shows every option's default)."""
    p = sub.add_parser(
        name,
        help=help,
        description=description,
        formatter_class=(
            argparse.ArgumentDefaultsHelpFormatter if show_defaults else argparse.HelpFormatter
        ),
    )
    p.set_defaults(func=run)
    return p


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
    add_device_options(p)


def add_device_options(p: argparse.ArgumentParser) -> None:
    """Where the MAX graphs run and how exact the encoder's first blocks are."""
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


def optional_float(value: str) -> float | None:
    return None if value.lower() == "none" else float(value)


def str2bool(value: str) -> bool:
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got '{value}'")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="max-whisper", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=ArgumentParser)
    sub.required = True
    for module in (
        "transcribe_args",
        "batch.command",
        "diagnostics",
        "bench",
        "demo",
        "server",
        "live.cli",
    ):
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
    from .__main__ import run

    run()
