"""`run()`: a corpus in, each file's transcripts and a manifest out, resumably."""

from __future__ import annotations

import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from ..backends import DEFAULT_BACKEND
from ..errors import MaxWhisperError, UsageError
from ..inputs import missing_input
from ..options import TranscribeOptions
from ..weights.registry import DEFAULT_MODEL
from ..writers import WRITERS, get_writer, prepare_output_dir
from .manifest import ERROR, OK, SKIPPED, Manifest, Record, file_stamp, fingerprint
from .progress import BatchProgress
from .results import Finished, error_line
from .sources import BatchItem, collect_items

DEFAULT_FORMATS = "all"
# what writers.write_atomically leaves behind when killed mid-write: .<name>.<8 random>.tmp
_TEMP_FILE = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


@dataclass
class BatchSummary:
    total: int
    ok: int
    skipped: int  # done by an earlier run with the same input and options
    failed: int
    interrupted: bool
    audio_seconds: float  # transcribed by this run
    wall_seconds: float
    manifest: str
    records: list[Record] = field(default_factory=list)  # this run's files, in input order


def run(
    inputs: Iterable[str | os.PathLike] | str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    formats: str | Iterable[str] = DEFAULT_FORMATS,
    model: str | os.PathLike = DEFAULT_MODEL,
    backend: str = DEFAULT_BACKEND,
    device: str = "auto",
    encoder_float64_blocks: int = 0,
    options: TranscribeOptions | None = None,
    batch_size: int = 8,
    force: bool = False,
    ray: bool | str | None = None,
    workers: int = 1,
    prefetch: int = 2,
    writer_options: dict | None = None,
    progress: bool = False,
    warm_start: bool = False,
    verbose: bool = False,
    **overrides,
) -> BatchSummary:
    """Transcribe every file of `inputs` (files, folders, globs, .txt/.csv/.jsonl manifests) into
    `out_dir`, mirroring the input tree, with `out_dir/manifest.jsonl` saying what became of each.
    Files done by an earlier run with the same input and options are skipped (`force`: redo them).
    A file that fails is recorded and the run goes on; Ctrl-C stops it, keeping what is complete.

    `ray`: True (a Ray instance on this machine) or a cluster's address runs the job on Ray with
    `workers` actors (from a process that has not loaded a MAX model); else one process here.
    `options` and keyword overrides: TranscribeOptions."""
    started = time.monotonic()
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    for name, value in (("batch_size", batch_size), ("workers", workers)):
        if value < 1:
            raise UsageError(f"{name} must be at least 1, got {value}")
    items = collect_items(list(inputs))
    out_dir = prepare_output_dir(out_dir)
    formats = parse_formats(formats)
    for fmt in formats:
        get_writer(fmt, out_dir)  # an unknown format fails before any work
    options = TranscribeOptions.from_kwargs(options, **overrides)
    writer_options = dict(writer_options or {})
    model_args = {
        "name": os.fspath(model),
        "backend": backend,
        "device": device,
        "encoder_float64_blocks": encoder_float64_blocks,
        "warm_start": warm_start,
    }
    shared = {"model": model_args["name"], "backend": backend, "formats": formats}
    shared.update(float64_blocks=encoder_float64_blocks, writer_options=writer_options)

    remove_stale_temp_files(out_dir)
    manifest = Manifest(out_dir)
    item_options = {item.path: options for item in items}
    fingerprints: dict[str, str] = {}
    records, pending = _plan(items, manifest, options, shared, force, item_options, fingerprints)
    for record in records.values():
        manifest.add(record, sync=False)
        if record.status == ERROR:
            _report(record)
    manifest.sync()

    bar = BatchProgress(len(pending), enabled=progress)
    interrupted = False
    audio_seconds = 0.0
    try:
        for finished in _engine(
            pending, item_options.__getitem__, model_args, batch_size, ray, workers, prefetch
        ):
            with _deferred_interrupt():  # a file's outputs, manifest line and report land together
                record = _record(finished, out_dir, formats, writer_options, fingerprints)
                manifest.add(record)
                records[record.path] = record
                if record.status == OK:
                    audio_seconds += record.duration or 0.0
                bar.update(record.duration, failed=record.status == ERROR)
                if record.status == ERROR:
                    _report(record, bar)
                elif verbose:
                    bar.write(f"{record.path}: {finished.result['text'].strip()}")
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
        manifest.close(order=[item.path for item in items])
    ordered = [records[item.path] for item in items if item.path in records]
    count = {s: sum(r.status == s for r in ordered) for s in (OK, SKIPPED, ERROR)}
    return BatchSummary(
        total=len(items),
        ok=count[OK],
        skipped=count[SKIPPED],
        failed=count[ERROR],
        interrupted=interrupted,
        audio_seconds=audio_seconds,
        wall_seconds=time.monotonic() - started,
        manifest=manifest.path,
        records=ordered,
    )


def _plan(
    items: list[BatchItem],
    manifest: Manifest,
    options: TranscribeOptions,
    shared: dict,
    force: bool,
    item_options: dict[str, TranscribeOptions],
    fingerprints: dict[str, str],
) -> tuple[dict[str, Record], list[BatchItem]]:
    """The records of the files that need no transcribing (done before, missing, bad options),
    and the files that do; fills in each file's options and their fingerprint."""
    records: dict[str, Record] = {}
    pending: list[BatchItem] = []
    owners: dict[str, str] = {}  # output name -> the input that has it
    for item in items:
        try:
            item_options[item.path] = own_options(options, item)
        except MaxWhisperError as exc:
            records[item.path] = _failure(item, error_line(exc))
            continue
        fingerprints[item.path] = fingerprint({**shared, "options": repr(item_options[item.path])})
        owner = owners.setdefault(item.relative, item.path)
        previous = None if force else manifest.done(item.path, fingerprints[item.path])
        if owner != item.path:
            records[item.path] = _failure(
                item, f"its outputs would overwrite those of {owner} (same name, same folder)"
            )
        elif previous is not None:
            records[item.path] = Record(**{**vars(previous), "status": SKIPPED})
        elif reason := missing_input(item.path):
            records[item.path] = _failure(item, reason)
        else:
            pending.append(item)
    return records, pending


def _report(record: Record, bar: BatchProgress | None = None) -> None:
    where = "" if record.path in record.error else f"{record.path}: "
    line = f"max-whisper: error: {where}{record.error}"
    if bar is None:
        print(line, file=sys.stderr, flush=True)
    else:
        bar.write(line, sys.stderr)


def parse_formats(formats: str | Iterable[str]) -> list[str]:
    """ "txt,srt" or ["txt", "srt"] or "all" -> the list of formats, each once."""
    names = formats.split(",") if isinstance(formats, str) else list(formats)
    names = [n.strip().lower() for n in names if n.strip()]
    if "all" in names:
        names = list(WRITERS)
    return list(dict.fromkeys({"text": "txt"}.get(n, n) for n in names))


def own_options(options: TranscribeOptions, item: BatchItem) -> TranscribeOptions:
    """The run's options with the file's own language and prompt (from a manifest)."""
    from ..tokenizer import normalize_language

    changes = {}
    if item.language:
        changes["language"] = normalize_language(item.language)
    if item.prompt:
        changes["initial_prompt"] = item.prompt
    return options.replace(**changes) if changes else options


def remove_stale_temp_files(out_dir: str) -> None:
    """The half-written temporary files of a killed run (its finished outputs stay)."""
    for folder, _, files in os.walk(out_dir):
        for name in files:
            if _TEMP_FILE.match(name):
                try:
                    os.unlink(os.path.join(folder, name))
                except OSError:
                    pass


def _engine(pending, options_for: Callable, model_args, batch_size, ray, workers, prefetch):
    if not pending:
        return iter(())
    if ray is not None and ray is not False:
        from .ray_engine import transcribe_ray

        address = ray if isinstance(ray, str) and ray else None
        return transcribe_ray(
            pending, lambda item: options_for(item.path), model_args, batch_size, workers, address
        )
    from .. import load_model
    from .local_engine import transcribe_local

    model = load_model(**model_args)
    return transcribe_local(
        model, pending, lambda item: options_for(item.path), batch_size, prefetch
    )


@contextmanager
def _deferred_interrupt() -> Iterator[None]:
    """Hold a Ctrl-C that arrives inside the block until the block is done (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda number, frame: caught.append(number))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def _record(
    finished: Finished, out_dir: str, formats: list[str], writer_options: dict, fingerprints: dict
) -> Record:
    item = finished.item
    size, mtime_ns = file_stamp(item.path) or (None, None)
    common = {"path": item.path, "duration": finished.duration, "seconds": finished.seconds}
    if finished.result is None:
        return Record(**common, status=ERROR, error=finished.error, size=size, mtime_ns=mtime_ns)
    try:
        outputs = write_outputs(finished.result, item, out_dir, formats, writer_options)
    except OSError as exc:
        return Record(**common, status=ERROR, error=error_line(exc))
    return Record(
        **common,
        status=OK,
        language=finished.result.get("language"),
        outputs=outputs,
        size=size,
        mtime_ns=mtime_ns,
        fingerprint=fingerprints[item.path],
    )


def write_outputs(
    result: dict, item: BatchItem, out_dir: str, formats: list[str], writer_options: dict
) -> list[str]:
    """Each format's file, written whole or not at all; their paths relative to out_dir."""
    folder = os.path.join(out_dir, os.path.dirname(item.relative))
    os.makedirs(folder, exist_ok=True)
    written = []
    for fmt in formats:
        path = get_writer(fmt, folder)(result, item.path, writer_options)
        written.append(os.path.relpath(path, out_dir))
    return written


def _failure(item: BatchItem, message: str) -> Record:
    return Record(path=item.path, status=ERROR, error=message)
