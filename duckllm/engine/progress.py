"""Progress of long work on stderr: rows done, total, rows/s and ETA.

Shown after the work has run a second, when settings.progress is on, or is unset and stderr is a
terminal (DUCKLLM_PROGRESS). Results stay alone on stdout (DuckDB's own progress bar writes there).
"""
from __future__ import annotations

import sys
import time

SHOW_AFTER_S = 1.0


class Progress:
    def __init__(self, label: str, total: int | None = None, stream=None, enabled: bool | None = None):
        """enabled: show it (True), never (False), or only on a terminal (None)."""
        self.label, self.total, self.done = label, total, 0
        self.by_proxy = 0       # of done: rows a proxy answered (duckllm.proxy), shown when any
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.started = time.perf_counter()
        self.shown = False

    def advance(self, n: int, proxy: bool = False) -> None:
        self.done += n
        self.by_proxy += n if proxy else 0
        elapsed = time.perf_counter() - self.started
        if not self.enabled or elapsed < SHOW_AFTER_S:
            return
        self.stream.write("\r" + self.line(elapsed) + "\x1b[K")
        self.stream.flush()
        self.shown = True

    def line(self, elapsed: float) -> str:
        rate = self.done / elapsed if elapsed > 0 else 0.0
        text = f"duckllm: {self.label} {self.done:,}"
        if self.total:
            text += f"/{self.total:,} rows"
            if rate > 0 and self.done < self.total:
                eta = int((self.total - self.done) / rate)
                text += f"  {rate:.1f} rows/s  ETA {eta // 3600}:{eta // 60 % 60:02d}:{eta % 60:02d}"
            else:
                text += f"  {rate:.1f} rows/s"
        else:
            text += f" rows  {rate:.1f} rows/s"
        if self.by_proxy:
            text += f"  (model {self.done - self.by_proxy:,}, proxy {self.by_proxy:,})"
        return text

    def close(self) -> None:
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()
