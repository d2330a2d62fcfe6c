"""The batch's progress: files done of all, hours of audio done, real-time factor, time to go and
failures so far; a bar on a terminal, a line every so often in a log, or nothing."""

from __future__ import annotations

import sys
import time

from ..progress import LINE_INTERVAL_S, ProgressBar


class BatchProgress:
    def __init__(self, total_files: int, enabled: bool = True, stream=None):
        self.stream = stream or sys.stderr
        self.mode = ProgressBar.mode_for(enabled, self.stream)
        self.total, self.done, self.failed, self.audio_seconds = total_files, 0, 0, 0.0
        self._started = self._last_line = time.monotonic()
        self._bar, self._done_in_line = None, None
        if self.mode == "bar" and total_files:
            from tqdm import tqdm

            self._bar = tqdm(
                total=total_files,
                unit="file",
                file=self.stream,
                leave=False,
                bar_format="{n}/{total} files |{bar}| {postfix}",
            )

    def update(self, duration: float | None, failed: bool) -> None:
        self.done += 1
        self.failed += failed
        self.audio_seconds += duration or 0.0
        if self._bar is not None:
            self._bar.n = self.done
            self._bar.set_postfix_str(self.status(), refresh=True)
        elif self.mode == "lines" and time.monotonic() - self._last_line >= LINE_INTERVAL_S:
            self._line()

    def status(self) -> str:
        elapsed = time.monotonic() - self._started
        rtfx = self.audio_seconds / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.audio_seconds / 3600:.2f} h audio", f"{rtfx:.1f}x real time"]
        if self.done and self.done < self.total:
            parts.append(f"about {elapsed * (self.total - self.done) / self.done:.0f} s to go")
        if self.failed:
            parts.append(f"{self.failed} failed")
        return ", ".join(parts)

    def write(self, line: str, file=None) -> None:
        """A line on stdout (or `file`) that leaves the bar intact."""
        file = file or sys.stdout
        if self._bar is not None:
            self._bar.write(line, file=file)
            file.flush()
        else:
            print(line, file=file, flush=True)

    def _line(self) -> None:
        self._last_line, self._done_in_line = time.monotonic(), self.done
        print(
            f"max-whisper: batch: {self.done}/{self.total} files, {self.status()}",
            file=self.stream,
            flush=True,
        )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif (
            self.mode == "lines"
            and time.monotonic() - self._started >= LINE_INTERVAL_S
            and self._done_in_line != self.done
        ):
            self._line()  # a long run says where it ended; a short one stays quiet
