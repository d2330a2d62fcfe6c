"""What a batch runs on: files, folders (recursive), globs and manifests, as one list of items.

A manifest is a `.txt` of paths (one a line, `#` comments), or a `.csv` / `.jsonl` with a path
column and optional `language` and `prompt` columns. Relative paths in a manifest are relative to
the manifest's folder. Each item's outputs go under the output folder at the item's path relative
to the common folder of the inputs (a folder or a glob's fixed part, else the files' own folders),
so the output tree mirrors the input tree.
"""

from __future__ import annotations

import csv
import glob
import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError
from ..inputs import AUDIO_EXTENSIONS, audio_files_in

MANIFEST_EXTENSIONS = (".txt", ".csv", ".jsonl")
PATH_COLUMNS = ("path", "audio", "file", "filename")
PROMPT_COLUMNS = ("prompt", "initial_prompt")


@dataclass(frozen=True)
class BatchItem:
    path: str  # absolute
    relative: str  # where its outputs go, under the output folder (without the extension)
    language: str | None = None  # this file's own, else the run's
    prompt: str | None = None


def collect_items(inputs: list[str | os.PathLike]) -> list[BatchItem]:
    """Every input expanded to items, each file once, in the order given."""
    found: list[tuple[str, str, dict]] = []  # (absolute path, the folder it is relative to, extras)
    for item in map(os.fspath, inputs):
        found += _expand(item)
    if not found:
        raise UsageError("no input files")
    root = os.path.commonpath([base for _, base, _ in found])
    items, seen = [], set()
    for path, _, extras in found:
        if path in seen:
            continue
        seen.add(path)
        relative = os.path.splitext(os.path.relpath(path, root))[0]
        items.append(BatchItem(path, relative, extras.get("language"), extras.get("prompt")))
    return items


def _expand(item: str) -> list[tuple[str, str, dict]]:
    if os.path.isdir(item):
        folder = os.path.abspath(item)
        files = audio_files_in(folder)
        if not files:
            raise UsageError(
                f"'{item}' is a directory with no audio files in it "
                f"({', '.join(sorted(AUDIO_EXTENSIONS))})"
            )
        return [(f, folder, {}) for f in files]
    if item.lower().endswith(MANIFEST_EXTENSIONS) and os.path.isfile(item):
        return read_manifest(item)
    if not os.path.exists(item) and glob.has_magic(item):
        matches = sorted(glob.glob(item, recursive=True))
        if not matches:
            raise UsageError(f"no file matches '{item}'")
        base = os.path.abspath(_glob_base(item))
        out = []
        for match in matches:
            if os.path.isdir(match):
                out += [(f, base, {}) for f in audio_files_in(os.path.abspath(match))]
            else:
                out.append((os.path.abspath(match), base, {}))
        return out
    path = os.path.abspath(item)  # a missing or unreadable file is that file's failure
    return [(path, os.path.dirname(path), {})]


def _glob_base(pattern: str) -> str:
    """The folder part of a pattern before its first wildcard."""
    parts = Path(pattern).parts
    fixed = [p for p in parts[: next(i for i, p in enumerate(parts) if glob.has_magic(p))]]
    return os.path.join(*fixed) if fixed else "."


def read_manifest(manifest: str) -> list[tuple[str, str, dict]]:
    """(absolute path, its folder, {"language", "prompt"}) for each entry."""
    folder = os.path.dirname(os.path.abspath(manifest))
    kind = os.path.splitext(manifest)[1].lower()
    with open(manifest, encoding="utf-8", newline="") as file:
        if kind == ".txt":
            rows = [
                {"path": line.strip()}
                for line in file
                if line.strip() and not line.lstrip().startswith("#")
            ]
        elif kind == ".csv":
            rows = list(csv.DictReader(file))
        else:
            rows = [_json_row(manifest, n, line) for n, line in enumerate(file, 1) if line.strip()]
    entries = []
    for n, row in enumerate(rows, 1):
        row = {str(k).strip().lower(): v for k, v in row.items() if k is not None}
        path = next((row[c] for c in PATH_COLUMNS if row.get(c)), None)
        if not path:
            raise UsageError(
                f"{manifest}: entry {n} has no path (a column named {' or '.join(PATH_COLUMNS)})"
            )
        extras = {
            "language": row.get("language") or None,
            "prompt": next((row[c] for c in PROMPT_COLUMNS if row.get(c)), None),
        }
        entries.append((os.path.join(folder, os.path.expanduser(str(path).strip())), extras))
    if not entries:
        raise UsageError(f"{manifest}: no entries")
    paths = [(os.path.normpath(path), extras) for path, extras in entries]
    return [(path, os.path.dirname(path), extras) for path, extras in paths]


def _json_row(manifest: str, number: int, line: str) -> dict:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{manifest}: line {number} is not JSON: {exc.msg}") from None
    if not isinstance(row, dict):
        raise UsageError(f"{manifest}: line {number} is not a JSON object")
    return row
