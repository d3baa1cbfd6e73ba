"""One payout run at a time per data directory.

A timer firing while the previous run still waits for a receipt, or cron and a human running it together,
would otherwise both read "job X is due" and both send a finalize (or both sweep the same balance). An
advisory ``flock`` is released by the kernel when the process dies, so a crashed run never leaves a stale
lock behind; it is taken without blocking, because a second run has nothing useful to wait for.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

LOCK_NAME = "payout.lock"


class Locked(RuntimeError):
    """Another process holds the payout lock."""


class RunLock:
    """Exclusive, non-blocking lock on ``<data_dir>/payout.lock``; use as a context manager."""

    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise Locked(f"{self.path} is held by another payout run") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())  # for a human asking "who holds it?"; the flock is the lock
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
