"""Live progress: a bar on a terminal, periodic log lines otherwise (an overnight job's log)."""

from __future__ import annotations

import logging
import sys
import time

from tqdm import tqdm

log = logging.getLogger("sdbatch.progress")


class Progress:
    """Counts rows done and failed against a total; shows rows/s and ETA."""

    def __init__(self, total: int, already_done: int = 0, log_every: float = 30.0, tty: bool | None = None):
        self.total = total
        self.done = already_done
        self.failed = 0
        self.started = time.monotonic()
        self._new = 0
        self._log_every = log_every
        self._last_log = self.started
        tty = sys.stderr.isatty() if tty is None else tty
        self._bar = tqdm(total=total, initial=already_done, unit="img", dynamic_ncols=True,
                         smoothing=0.1) if tty else None

    def advance(self, rows: int, failed: int = 0) -> None:
        self.done += rows
        self._new += rows
        self.failed += failed
        if self._bar is not None:
            self._bar.update(rows)
            if failed:
                self._bar.set_postfix(failed=self.failed)
            return
        now = time.monotonic()
        if now - self._last_log >= self._log_every:
            self._last_log = now
            log.warning("%s", self.line())

    def add_failed(self, failed: int) -> None:
        if failed:
            self.failed += failed
            if self._bar is not None:
                self._bar.set_postfix(failed=self.failed)

    @property
    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return self._new / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        rate = self.rate
        left = self.total - self.done
        eta = f"{left / rate / 60:.1f} min" if rate > 0 else "?"
        return (f"progress: {self.done}/{self.total} rows ({100 * self.done / max(self.total, 1):.1f}%), "
                f"{rate:.2f} img/s, ETA {eta}, {self.failed} failed")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
