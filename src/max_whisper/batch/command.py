"""`max-whisper batch`: a corpus in, transcripts and a manifest out (see runner.run)."""

from __future__ import annotations

import os
import sys

from ..engine import DEFAULT_BATCH_SIZE
from ..errors import UsageError
from ..writers import FORMATS, WORD_OPTIONS


def add_parsers(sub) -> None:
    from ..cli import add_command
    from ..transcribe_args import add_transcribe_options

    p = add_command(
        sub,
        "batch",
        cmd_batch,
        help="transcribe a whole corpus, resumably, here or on a Ray cluster",
        show_defaults=True,
        description="Transcribe every file of a corpus into OUT_DIR (mirroring the input tree), "
        "with OUT_DIR/manifest.jsonl saying what became of each file. A rerun skips the files "
        "already done with the same options; a file that fails is recorded and the run goes on.",
    )
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="audio files, folders (searched recursively), globs, or manifests: a .txt of paths, "
        "or a .csv / .jsonl with a path column and optional language and prompt columns",
    )
    p.add_argument("-o", "--output-dir", "--output_dir", dest="output_dir", required=True)
    p.add_argument(
        "-f",
        "--output-format",
        "--output_format",
        dest="output_format",
        default="all",
        help=f"comma-separated formats ({', '.join(FORMATS)})",
    )
    p.add_argument("--force", action="store_true", help="redo the files already done")
    p.add_argument(
        "--ray",
        nargs="?",
        const="",
        default=None,
        metavar="ADDRESS",
        help="run on a Ray cluster at ADDRESS (host:port, or auto); no ADDRESS: a Ray "
        "instance on this machine (the cluster extra)",
    )
    p.add_argument("--workers", type=int, default=1, help="--ray: actors, each with its model")
    p.add_argument(
        "--prefetch", type=int, default=2, help="local: threads decoding the next files' audio"
    )
    add_transcribe_options(p, output_options=False)
    p.set_defaults(batch_size=DEFAULT_BATCH_SIZE, verbose=False)


def cmd_batch(args) -> int:
    from ..transcribe_args import transcribe_options
    from ..transcribe_command import model_location, use_cores
    from .runner import run

    if args.encoder_float64_blocks < 0:
        raise UsageError("--encoder-float64-blocks must not be negative")
    if args.ray and os.path.exists(args.ray):  # `--ray folder -o out`: the folder is an input
        args.inputs, args.ray = [args.ray, *args.inputs], ""
    use_cores(args.threads)
    summary = run(
        args.inputs,
        args.output_dir,
        formats=args.output_format,
        model=model_location(args.model, args.model_dir),
        backend=args.backend,
        device=args.device,
        encoder_float64_blocks=args.encoder_float64_blocks,
        options=transcribe_options(args),
        batch_size=args.batch_size,
        force=args.force,
        ray=args.ray,
        workers=args.workers,
        prefetch=args.prefetch,
        writer_options={name: getattr(args, name) for name in WORD_OPTIONS},
        progress=not args.no_progress,
        warm_start=not args.wait_for_compile,
        verbose=args.verbose,
    )
    print(
        f"max-whisper: batch: {summary.total} files: {summary.ok} transcribed, "
        f"{summary.skipped} done before, {summary.failed} failed; manifest: {summary.manifest}",
        file=sys.stderr,
        flush=True,
    )
    if summary.interrupted:
        print("max-whisper: interrupted: rerun the same command to go on", file=sys.stderr)
        return 130
    if summary.failed:
        print(f"max-whisper: {summary.failed} of {summary.total} files failed", file=sys.stderr)
        return 1
    return 0
