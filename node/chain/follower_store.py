"""The event follower's memory: its cursor, the hashes of recent blocks and the logs it delivered from them.

It lives in SQLite so that a restart neither skips nor repeats events, and so that a reorg that happens
while the node is down can still be answered with removals of exactly what was delivered before. Logs are
kept raw (topics and data) rather than decoded, so the removal is decoded by the same code as the original
and the table needs no migration when an ABI gains a field.

Each method is one short transaction; the follower runs them in a thread (they fsync). Tables carry the
``follower_`` prefix because the node's other components keep their own tables in the same file.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.sqlite import open_sqlite, write_transaction

_SCHEMA = """
CREATE TABLE IF NOT EXISTS follower_cursor (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    number INTEGER NOT NULL,
    hash BLOB NOT NULL,
    addresses TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS follower_blocks (
    number INTEGER PRIMARY KEY,
    hash BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS follower_logs (
    block_number INTEGER NOT NULL,
    log_index INTEGER NOT NULL,
    block_hash BLOB NOT NULL,
    tx_hash BLOB NOT NULL,
    address TEXT NOT NULL,
    topics BLOB NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (block_number, log_index)
);
"""


class FollowerStateError(RuntimeError):
    """The stored cursor belongs to other contracts than the ones the follower was given."""


@dataclass(frozen=True)
class Cursor:
    """The last block whose events were delivered (and committed). Number -1 means "before genesis"."""

    number: int
    hash: bytes


@dataclass(frozen=True)
class RawLog:
    """A delivered log as stored: enough to decode it again for its removal."""

    block_number: int
    log_index: int
    block_hash: bytes
    tx_hash: bytes
    address: str
    topics: tuple[bytes, ...]
    data: bytes

    @classmethod
    def from_rpc(cls, log: Mapping[str, Any]) -> RawLog:
        return cls(int(log["blockNumber"]), int(log["logIndex"]), bytes(log["blockHash"]),
                   bytes(log["transactionHash"]), str(log["address"]), tuple(bytes(t) for t in log["topics"]),
                   bytes(log["data"]))


class FollowerStore:
    """SQLite state of one follower. ``addresses`` pins the state to the contracts it was built from."""

    def __init__(self, db_path: Path | str, addresses: Mapping[str, str]) -> None:
        self._addresses = json.dumps({k: v.lower() for k, v in sorted(addresses.items())})
        self._lock = threading.Lock()  # one connection shared by worker threads, one statement at a time
        self._db = open_sqlite(db_path, _SCHEMA)
        try:
            self.cursor = self._load_cursor()
        except BaseException:
            self._db.close()
            raise

    def _load_cursor(self) -> Cursor | None:
        row = self._db.execute("SELECT number, hash, addresses FROM follower_cursor WHERE id = 1").fetchone()
        if row is None:
            return None
        if row[2] != self._addresses:
            raise FollowerStateError(f"the follower state in this database follows {row[2]}, not {self._addresses}; "
                                     "use a fresh data directory for a new deployment")
        return Cursor(int(row[0]), bytes(row[1]))

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def recent_blocks(self) -> list[Cursor]:
        """Stored block hashes, newest first: the candidates for a common ancestor after a reorg."""
        with self._lock:
            rows = self._db.execute("SELECT number, hash FROM follower_blocks ORDER BY number DESC").fetchall()
        return [Cursor(int(n), bytes(h)) for n, h in rows]

    def logs_after(self, number: int) -> list[RawLog]:
        """Delivered logs from blocks above ``number``, newest first (the order removals go out in)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT block_number, log_index, block_hash, tx_hash, address, topics, data FROM follower_logs "
                "WHERE block_number > ? ORDER BY block_number DESC, log_index DESC", (number,)).fetchall()
        return [RawLog(int(b), int(i), bytes(bh), bytes(tx), a, _split_topics(bytes(t)), bytes(d))
                for b, i, bh, tx, a, t, d in rows]

    def advance(self, cursor: Cursor, logs: Iterable[RawLog], keep_from: int) -> None:
        """Records that everything up to ``cursor`` was delivered, with the logs to remember for removals,
        in one transaction; forgets blocks and logs below ``keep_from``, which can no longer be reorged."""
        rows = [(lg.block_number, lg.log_index, lg.block_hash, lg.tx_hash, lg.address, b"".join(lg.topics), lg.data)
                for lg in logs]

        def write(db: sqlite3.Connection) -> None:
            self._set_cursor(cursor)
            db.execute("INSERT OR REPLACE INTO follower_blocks (number, hash) VALUES (?, ?)",
                       (cursor.number, cursor.hash))
            db.executemany("INSERT OR REPLACE INTO follower_logs VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            db.execute("DELETE FROM follower_blocks WHERE number < ?", (keep_from,))
            db.execute("DELETE FROM follower_logs WHERE block_number < ?", (keep_from,))

        write_transaction(self._db, self._lock, write)
        self.cursor = cursor

    def rewind(self, ancestor: Cursor) -> None:
        """Forgets every block above the common ancestor (after their removals were delivered)."""

        def write(db: sqlite3.Connection) -> None:
            self._set_cursor(ancestor)
            db.execute("DELETE FROM follower_blocks WHERE number > ?", (ancestor.number,))
            db.execute("INSERT OR REPLACE INTO follower_blocks (number, hash) VALUES (?, ?)",
                       (ancestor.number, ancestor.hash))
            db.execute("DELETE FROM follower_logs WHERE block_number > ?", (ancestor.number,))

        write_transaction(self._db, self._lock, write)
        self.cursor = ancestor

    def _set_cursor(self, cursor: Cursor) -> None:
        self._db.execute("INSERT OR REPLACE INTO follower_cursor (id, number, hash, addresses) VALUES (1, ?, ?, ?)",
                         (cursor.number, cursor.hash, self._addresses))


def _split_topics(blob: bytes) -> tuple[bytes, ...]:
    return tuple(blob[i:i + 32] for i in range(0, len(blob), 32))
