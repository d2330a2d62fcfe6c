"""A progress bar over audio seconds, shown on a terminal only."""
from __future__ import annotations

import sys


class ProgressBar:
    def __init__(self, total: float, enabled: bool = True, desc: str = ""):
        self._bar = None
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=round(total, 1), unit="s", desc=desc, file=sys.stderr, leave=False,
                             bar_format="{desc} {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s audio [{elapsed}<{remaining}]")

    def update_to(self, done: float, total: float) -> None:
        if self._bar is not None:
            self._bar.total = round(total, 1)
            self._bar.n = min(round(done, 1), self._bar.total)
            self._bar.refresh()

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.close()
