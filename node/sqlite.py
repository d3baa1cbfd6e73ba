"""The one way the node opens and writes its SQLite file, shared by the chain and jobs layers' stores.

Each store keeps one connection shared by worker threads (the event loop never touches SQLite), so
statements are serialised by a lock, and every write is one short ``BEGIN IMMEDIATE`` transaction.
WAL with ``synchronous=FULL``: a recorded claim or signed transaction must survive power loss, not just
a crash of the process.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def open_sqlite(path: Path | str, schema: str) -> sqlite3.Connection:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA busy_timeout=10000")
        db.execute("PRAGMA foreign_keys=ON")
        db.executescript(schema)
    except BaseException:
        db.close()
        raise
    return db


def write_transaction(db: sqlite3.Connection, lock: threading.Lock, fn: Callable[[sqlite3.Connection], T]) -> T:
    """Runs ``fn`` in one immediate transaction: all of it is committed, or none of it."""
    with lock:
        db.execute("BEGIN IMMEDIATE")
        try:
            out = fn(db)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return out
