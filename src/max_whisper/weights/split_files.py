"""Finding every part of a split CTranslate2 file, beside it or in the named model's packages."""

from __future__ import annotations

from pathlib import Path

from .errors import WeightsError
from .registry import NAMED_MODELS, ModelNotFoundError


def split_parts(first: Path) -> list[Path]:
    """All parts of a split CTranslate2 file: `<x>.part1`, `<x>.part2`… beside each other, or the
    parts of the named model whose first part this is (their parts live in separate packages)."""
    stem = first.name[: -len("1")]
    parts = [first]
    while (nxt := first.with_name(f"{stem}{len(parts) + 1}")).is_file():
        parts.append(nxt)
    if len(parts) > 1:
        return parts
    for model in NAMED_MODELS.values():
        if len(model.files) < 2 or Path(model.files[0]).name != first.name:
            continue
        try:
            located = model.locate()
        except ModelNotFoundError:
            continue
        if located[0].resolve() == first.resolve():
            return located
    raise WeightsError(
        f"'{first}' is the first part of a split model but {stem}2 is not beside it: "
        "put all the parts in one folder"
    )
