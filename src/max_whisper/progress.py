"""Progress over audio seconds: a bar on a terminal, plain periodic lines in a log, or nothing."""

from __future__ import annotations

import sys
import time

LINE_INTERVAL_S = 10.0  # a log gets a line at most this often


class ProgressBar:
    """mode "bar" (tqdm on stderr), "lines" (a line every LINE_INTERVAL_S and one at the end) or
    "off"."""

    def __init__(self, total: float, mode: str = "bar", desc: str = "", stream=None):
        self.mode, self.desc, self.total = mode, desc, total
        self.stream = stream or sys.stderr
        self._bar = None
        self._started = self._last_line = time.monotonic()
        self._done = 0.0
        if mode == "bar":
            from tqdm import tqdm

            self._bar = tqdm(
                total=round(total, 1),
                unit="s",
                desc=desc,
                file=self.stream,
                leave=False,
                bar_format="{desc} {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s audio "
                "[{elapsed}<{remaining}]",
            )

    @staticmethod
    def mode_for(enabled: bool, stream=None) -> str:
        """The mode a command should use: nothing when disabled, a bar on a terminal, else lines."""
        if not enabled:
            return "off"
        return "bar" if (stream or sys.stderr).isatty() else "lines"

    def update_to(self, done: float, total: float) -> None:
        self.total, self._done = total, max(self._done, min(done, total))
        if self._bar is not None:
            self._bar.total = round(total, 1)
            self._bar.n = round(self._done, 1)
            self._bar.refresh()
        elif self.mode == "lines" and time.monotonic() - self._last_line >= LINE_INTERVAL_S:
            self._line()

    def write(self, line: str) -> None:
        """A line of output on stdout that leaves the bar intact."""
        if self._bar is not None:
            self._bar.write(line, file=sys.stdout)
            sys.stdout.flush()
        else:
            print(line, flush=True)

    def _line(self, final: bool = False) -> None:
        self._last_line = now = time.monotonic()
        elapsed = now - self._started
        percent = 100 * self._done / self.total if self.total else 100.0
        eta = elapsed * (self.total - self._done) / self._done if self._done else None
        status = (
            f"done in {elapsed:.0f} s"
            if final
            else f"{elapsed:.0f} s elapsed"
            + (f", about {eta:.0f} s to go" if eta is not None else "")
        )
        print(
            f"max-whisper: {self.desc}: {self._done:.0f}/{self.total:.0f} s of audio "
            f"({percent:.0f}%), {status}",
            file=self.stream,
            flush=True,
        )

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if self._bar is not None:
            self._bar.close()
        elif (
            self.mode == "lines"
            and exc_type is None
            and time.monotonic() - self._started >= LINE_INTERVAL_S
        ):
            self._done = self.total
            self._line(final=True)  # a long run says when it ended; a short one stays quiet
