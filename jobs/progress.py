"""Live progress: a bar on a terminal, periodic INFO log lines otherwise (an overnight job's log).

The rate (and so the ETA) is measured from the first finished batch, not from the start: start-up
(Ray, model loads, compiles) would make early ETAs wrong by a factor of ten or more.
"""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("sdbatch.progress")


class Progress:
    """Counts rows done and failed against a total; shows rows/s and ETA."""

    def __init__(self, total: int, already_done: int = 0, already_failed: int = 0, log_every: float = 30.0,
                 tty: bool | None = None):
        self.total = total
        self.done = already_done
        self.failed = already_failed
        self._tty = sys.stderr.isatty() if tty is None else tty
        self._log_every = log_every
        self._first: tuple[float, int] | None = None  # (time, rows done) at the first batch
        self._last_log = time.monotonic()
        self._bar = None

    def advance(self, rows: int, failed: int = 0) -> None:
        now = time.monotonic()
        if self._first is None and self._tty:
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, initial=self.done, unit="img", dynamic_ncols=True, smoothing=0.1)
        self.done += rows
        self.failed += failed
        if self._first is None:  # the clock starts when the first batch is done: start-up is not speed
            self._first = (now, self.done)
            self._last_log = now
        if self._bar is not None:
            self._bar.update(rows)
            if self.failed:
                self._bar.set_postfix(failed=self.failed)
        elif now - self._last_log >= self._log_every:
            self._last_log = now
            log.info("%s", self.line())

    @property
    def rate(self) -> float:
        """Rows per second since the first batch finished."""
        if self._first is None:
            return 0.0
        elapsed = time.monotonic() - self._first[0]
        return (self.done - self._first[1]) / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        rate = self.rate
        left = self.total - self.done
        eta = f"{left / rate / 60:.1f} min" if rate > 0 else "?"
        return (f"progress: {self.done:,}/{self.total:,} rows ({100 * self.done / max(self.total, 1):.1f}%), "
                f"{rate:.2f} img/s, ETA {eta}, {self.failed:,} failed")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
