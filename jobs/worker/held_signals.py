"""Ctrl-C and SIGTERM held while a shard commits, so that they cannot cut a commit's steps apart
(images put in place, then the shard's metadata, then its marker): a stop lands before the commit's
first step or after its last, never between, and no reader sees a shard's images without its
marker. Python runs signal handlers only in the main thread, which is where the local executor
commits; on other threads (a Ray actor's) the block runs as it is, and a killed actor's shard is
cleaned up by the driver (``cluster/ray_executor.py``)."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator

HELD = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def held_signals() -> Iterator[None]:
    """Run the block with SIGINT and SIGTERM held; deliver the first one that came when it ends."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {signum: signal.signal(signum, lambda signum, _frame: caught.append(signum)) for signum in HELD}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if caught:
            _deliver(caught[0], previous[caught[0]])


def _deliver(signum: int, handler) -> None:
    """What the signal would have done had it not been held."""
    if callable(handler):
        handler(signum, None)
    elif handler != signal.SIG_IGN:  # SIG_DFL, or a handler set outside Python
        signal.raise_signal(signum)
