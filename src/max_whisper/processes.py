"""The environment of a child Python process that must import this same max_whisper."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_PARENT = str(
    Path(__file__).resolve().parents[1]
)  # the folder holding the max_whisper package


def child_env(extra: dict[str, str] | None = None, *, clean: bool = False) -> dict[str, str]:
    """This process's environment (with clean=True, only PATH), with the folder holding max_whisper
    first on PYTHONPATH, plus `extra`."""
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")} if clean else dict(os.environ)
    path = os.pathsep.join(p for p in (PACKAGE_PARENT, base.get("PYTHONPATH")) if p)
    return {**base, "PYTHONPATH": path, **(extra or {})}
