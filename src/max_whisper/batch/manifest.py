"""`manifest.jsonl`: one line per input file, what became of it, and what a rerun may skip.

Each finished file's line is appended (and flushed to disk) as soon as its outputs are written,
so a killed run loses nothing it finished; reading takes the last line of each path. At the end
of a run the file is rewritten with exactly one line per path.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
from dataclasses import dataclass, field

from ..errors import UsageError
from ..writers import write_atomically

MANIFEST_NAME = "manifest.jsonl"
OK, ERROR, SKIPPED = "ok", "error", "skipped"


@dataclass
class Record:
    path: str
    status: str  # ok | error | skipped
    duration: float | None = None  # seconds of audio
    language: str | None = None
    seconds: float | None = None  # wall time it took
    outputs: list[str] = field(default_factory=list)  # relative to the output folder
    error: str | None = None  # one line, for status error
    size: int | None = None  # the input's, when it was transcribed
    mtime_ns: int | None = None
    fingerprint: str | None = None  # of the options it was transcribed with

    def to_line(self) -> str:
        return json.dumps(dataclasses.asdict(self), ensure_ascii=False) + "\n"

    @classmethod
    def from_line(cls, line: str) -> Record | None:
        try:
            data = json.loads(line)
            return cls(**{f.name: data.get(f.name) for f in dataclasses.fields(cls)})
        except (json.JSONDecodeError, TypeError, AttributeError):
            return None  # a line cut short by a kill: that file is simply not done


def fingerprint(settings: dict) -> str:
    """A short hash of everything that shapes a file's outputs."""
    text = json.dumps(settings, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def file_stamp(path: str) -> tuple[int, int] | None:
    """(size, mtime in ns), or None for a file that cannot be stat'ed."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns


class Manifest:
    """The manifest of one output folder, held (a lock file) while a run writes to it."""

    def __init__(self, out_dir: str):
        self.out_dir = out_dir
        self.path = os.path.join(out_dir, MANIFEST_NAME)
        self._lock = open(os.path.join(out_dir, f".{MANIFEST_NAME}.lock"), "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise UsageError(f"another batch run is writing to '{out_dir}'") from None
        self.records: dict[str, Record] = {}
        if os.path.exists(self.path):
            with open(self.path, encoding="utf-8") as file:
                for line in file:
                    record = Record.from_line(line)
                    if record is not None and isinstance(record.path, str):
                        self.records[record.path] = record
        self._file = open(self.path, "a", encoding="utf-8")

    def done(self, path: str, settings_fingerprint: str) -> Record | None:
        """The record of a file finished before with the same input and options, whose outputs
        are all there; else None."""
        record = self.records.get(path)
        if record is None or record.status not in (OK, SKIPPED):
            return None
        stamp = file_stamp(path)
        if stamp is None or stamp != (record.size, record.mtime_ns):
            return None
        if record.fingerprint != settings_fingerprint or not record.outputs:
            return None
        if not all(os.path.isfile(os.path.join(self.out_dir, o)) for o in record.outputs):
            return None
        return record

    def add(self, record: Record, sync: bool = True) -> None:
        self.records[record.path] = record
        self._file.write(record.to_line())
        if sync:
            self.sync()

    def sync(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self, order: list[str] = ()) -> None:
        """Rewrite the file with one line per path (those of `order` first, in that order), and
        let go of the folder."""
        self._file.close()
        ordered = {path: self.records[path] for path in order if path in self.records}
        ordered.update(self.records)
        write_atomically(self.path, "".join(r.to_line() for r in ordered.values()))
        with contextlib.suppress(OSError):
            os.unlink(self._lock.name)
        self._lock.close()
