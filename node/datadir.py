"""The node's data directory, and the lock that keeps a second node off it.

Two nodes on one data directory would share a journal and a transaction store and send each other's
claims twice; two nodes with the same key would race for nonces. The lock is an advisory flock on
``node.lock`` (released by the kernel when the process dies, so a crash never leaves a stale lock) and
the file names the holder's pid for the error message.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class DataDirLocked(RuntimeError):
    pass


class DataDir:
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).expanduser()
        self._fd: int | None = None

    def path(self, name: str) -> Path:
        return self.root / name

    def lock(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.root / "node.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DataDirLocked(f"another gpunode (pid {holder}) is running on data dir {self.root}; stop it "
                                "first, or give this one its own node.data_dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def unlock(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
