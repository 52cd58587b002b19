"""One driver at a time on an OUT: the lease ``OUT/_job/lease.json``.

A run takes the lease before it touches OUT (host, pid, start, a heartbeat it refreshes every
``HEARTBEAT_SECONDS`` on a thread) and gives it back when it ends, however it ends. A second driver
finds the lease and is refused, naming the holder and how old its heartbeat is, unless the holder
is dead: its heartbeat is older than ``STALE_SECONDS``, or it ran on this host and its process is
gone. A dead driver's lease is then taken over (a killed run is resumed without waiting).

Taking the lease is one exclusive create: a hard link on local disk (atomic, also on NFS; an
``O_EXCL`` create where the filesystem has no hard links), a conditional put (``If-None-Match: *``)
on S3 (a look-then-put where the store refuses conditional puts). A store that ignores the
condition, or two drivers taking over the same dead lease at the same instant, can still let both
run: on S3 this is best effort. Heartbeats compare wall clocks of different hosts: clocks more than ``STALE_SECONDS`` apart
make a live lease look dead.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass

from .outdir import OutputFolder
from .paths import LEASE
from .storage import StorageError

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 10.0
STALE_SECONDS = 60.0


class LeaseHeld(RuntimeError):
    """Another live driver holds OUT; the message names it."""


@dataclass(frozen=True)
class LeaseInfo:
    host: str
    pid: int
    started: float  # time.time() of the driver's start
    heartbeat: float  # time.time() of its last heartbeat
    token: str  # tells this holder from a later one

    def age(self, now: float | None = None) -> float:
        return max(0.0, (now or time.time()) - self.heartbeat)

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}, heartbeat {self.age():.0f}s ago"


def _pid_gone(pid: int) -> bool:
    """Whether no process ``pid`` runs on this host (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OSError):
        return False
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def holder_dead(info: LeaseInfo, host: str) -> str | None:
    """Why the holder is dead (its lease may be taken over), or None when it may be alive."""
    if info.age() > STALE_SECONDS:
        return f"its heartbeat is {info.age():.0f}s old"
    if info.host == host and _pid_gone(info.pid):
        return f"process {info.pid} is gone"
    return None


class Lease:
    """The lease on ``folder``: ``acquire``, ``start`` (the heartbeat), ``release``."""

    def __init__(self, folder: OutputFolder):
        self.folder = folder
        self.storage = folder.storage
        now = time.time()
        self.info = LeaseInfo(socket.gethostname(), os.getpid(), now, now, uuid.uuid4().hex)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _read(self) -> LeaseInfo | None:
        """The lease in OUT; None when there is none, or it cannot be read (a damaged lease holds nothing)."""
        try:
            body = json.loads(self.storage.read_bytes(LEASE))
            return LeaseInfo(**body) if isinstance(body, dict) else None
        except FileNotFoundError:
            return None
        except (ValueError, TypeError, UnicodeDecodeError):
            return None

    def _body(self) -> bytes:
        return json.dumps(asdict(self.info)).encode()

    def acquire(self) -> None:
        for _ in range(3):
            if self.storage.create_exclusive(LEASE, self._body()):
                return
            held = self._read()
            if held is not None:
                why = holder_dead(held, self.info.host)
                if why is None:
                    raise LeaseHeld(f"{self.folder.root} is in use by another sdbatch run ({held.describe()}); "
                                    "wait for it to end or stop it (a run that died is taken over once its "
                                    f"heartbeat is {STALE_SECONDS:.0f}s old, or at once on its own host)")
                log.warning("taking over the lease of a run that died (%s: %s)", held.describe(), why)
            again = self._read()
            if again is not None and held is not None and again.token != held.token:
                continue  # someone else changed it meanwhile: look again
            self.storage.delete(LEASE)
        raise LeaseHeld(f"{self.folder.root}: another sdbatch run keeps taking the lease; try again")

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                held = self._read()
                if held is not None and held.token != self.info.token:
                    log.error("another run took over the lease on %s (%s)", self.folder.root, held.describe())
                    return
                self.info = LeaseInfo(**{**asdict(self.info), "heartbeat": time.time()})
                self.storage.write_bytes(LEASE, self._body())
            except (StorageError, OSError) as exc:
                log.warning("cannot refresh the lease on %s: %s", self.folder.root, exc)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            held = self._read()
            if held is not None and held.token == self.info.token:
                self.storage.delete(LEASE)
        except (StorageError, OSError) as exc:
            log.warning("cannot give back the lease on %s: %s", self.folder.root, exc)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._beat, name="lease-heartbeat", daemon=True)
        self._thread.start()
