"""The transaction manager's memory: every intent and every signed attempt, in SQLite, before it acts.

An intent is one effect the node wants on chain, named by an idempotency key such as ``claim:<jobId>``;
the key is the primary key, so asking twice can never create two. Each intent gets at most one nonce,
and every signed attempt at that nonce (the first send and each fee bump) is stored with its raw bytes
before it is broadcast: after a crash the node can look for any of their receipts and rebroadcast the
exact same bytes, never signing a second transaction for the same effect.

All methods are synchronous and short; the async manager calls them through a worker thread.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from node.sqlite import open_sqlite, write_transaction


class TxState(StrEnum):
    QUEUED = "queued"  # intent stored; not signed yet (no nonce)
    PENDING = "pending"  # signed at a fixed nonce; broadcast or about to be
    MINED = "mined"  # a receipt exists; waiting for confirmations
    CONFIRMED = "confirmed"  # success, deep enough
    REVERTED = "reverted"  # mined and reverted, deep enough
    REJECTED = "rejected"  # simulation says it would revert; never sent
    FAILED = "failed"  # will not happen (e.g. its nonce was used by another transaction); asking again retries

    @property
    def done(self) -> bool:
        return self in (TxState.CONFIRMED, TxState.REVERTED, TxState.REJECTED, TxState.FAILED)

    @property
    def retryable(self) -> bool:
        """Nothing of this intent reached the chain, so the same key may be asked for again."""
        return self in (TxState.REJECTED, TxState.FAILED)


@dataclass(frozen=True)
class Intent:
    key: str
    sender: str
    to: str | None
    data: bytes
    value: int
    gas: int | None
    nonce: int | None
    state: TxState
    reason: str
    tx_hash: str | None  # the attempt that was mined, once one was
    block_number: int | None
    block_hash: str | None
    receipt: str | None  # JSON
    created: float
    updated: float


@dataclass(frozen=True)
class Attempt:
    hash: str
    key: str
    nonce: int
    max_fee: int
    tip: int
    raw: bytes
    sent_block: int | None  # head when last broadcast; None: not broadcast yet


_SCHEMA = """
CREATE TABLE IF NOT EXISTS tx_intents (
    key TEXT PRIMARY KEY, sender TEXT NOT NULL, to_addr TEXT, data BLOB NOT NULL, value TEXT NOT NULL,
    gas INTEGER, nonce INTEGER, state TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '',
    tx_hash TEXT, block_number INTEGER, block_hash TEXT, receipt TEXT,
    created REAL NOT NULL, updated REAL NOT NULL);
CREATE INDEX IF NOT EXISTS tx_intents_open ON tx_intents(sender, state);
CREATE TABLE IF NOT EXISTS tx_attempts (
    hash TEXT PRIMARY KEY, key TEXT NOT NULL REFERENCES tx_intents(key), nonce INTEGER NOT NULL,
    max_fee TEXT NOT NULL, tip TEXT NOT NULL, raw BLOB NOT NULL, sent_block INTEGER, created REAL NOT NULL);
CREATE INDEX IF NOT EXISTS tx_attempts_key ON tx_attempts(key);
"""
_INTENT_COLS = ("key, sender, to_addr, data, value, gas, nonce, state, reason, tx_hash, block_number, block_hash, "
                "receipt, created, updated")


class TxStore:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db = open_sqlite(self.path, _SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _tx(self, fn):
        return write_transaction(self._db, self._lock, fn)

    def get(self, key: str) -> Intent | None:
        with self._lock:
            row = self._db.execute(f"SELECT {_INTENT_COLS} FROM tx_intents WHERE key = ?", (key,)).fetchone()
        return _intent(row) if row else None

    def open_intents(self, sender: str, watch_from_block: int) -> list[Intent]:
        """Everything not settled yet, plus settled intents mined at or after ``watch_from_block``, whose
        receipt a reorg could still undo."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_INTENT_COLS} FROM tx_intents WHERE sender = ? AND (state IN (?, ?, ?) "
                "OR (state IN (?, ?) AND block_number >= ?)) ORDER BY nonce IS NULL, nonce, created",
                (sender, TxState.QUEUED, TxState.PENDING, TxState.MINED, TxState.CONFIRMED, TxState.REVERTED,
                 watch_from_block),
            ).fetchall()
        return [_intent(r) for r in rows]

    def add(self, key: str, sender: str, to: str | None, data: bytes, value: int, gas: int | None) -> Intent:
        """Stores a new intent, or revives a retryable one; returns what is stored under the key."""
        now = time.time()

        def write(db: sqlite3.Connection) -> None:
            row = db.execute("SELECT state FROM tx_intents WHERE key = ?", (key,)).fetchone()
            if row is None:
                db.execute(f"INSERT INTO tx_intents ({_INTENT_COLS}) VALUES (?,?,?,?,?,?,NULL,?,'',NULL,NULL,NULL,"
                           "NULL,?,?)", (key, sender, to, data, str(value), gas, TxState.QUEUED, now, now))
            elif TxState(row[0]).retryable:
                db.execute("DELETE FROM tx_attempts WHERE key = ?", (key,))
                db.execute("UPDATE tx_intents SET to_addr=?, data=?, value=?, gas=?, nonce=NULL, state=?, reason='', "
                           "tx_hash=NULL, block_number=NULL, block_hash=NULL, receipt=NULL, updated=? WHERE key=?",
                           (to, data, str(value), gas, TxState.QUEUED, now, key))

        self._tx(write)
        return self.get(key)  # type: ignore[return-value]

    def max_nonce(self, sender: str) -> int | None:
        with self._lock:
            row = self._db.execute("SELECT MAX(nonce) FROM tx_intents WHERE sender = ? AND state != ?",
                                   (sender, TxState.FAILED)).fetchone()
        return row[0]

    def add_attempt(self, key: str, nonce: int, gas: int, tx_hash: str, max_fee: int, tip: int, raw: bytes) -> None:
        """Records a signed attempt (and the intent's nonce and gas limit) in one transaction, before any
        broadcast; replacements reuse both."""
        now = time.time()

        def write(db: sqlite3.Connection) -> None:
            db.execute("INSERT OR IGNORE INTO tx_attempts (hash, key, nonce, max_fee, tip, raw, sent_block, created) "
                       "VALUES (?,?,?,?,?,?,NULL,?)", (tx_hash, key, nonce, str(max_fee), str(tip), raw, now))
            db.execute("UPDATE tx_intents SET nonce=?, gas=?, state=?, updated=? WHERE key=? AND state IN (?, ?)",
                       (nonce, gas, TxState.PENDING, now, key, TxState.QUEUED, TxState.PENDING))

        self._tx(write)

    def attempts(self, key: str) -> list[Attempt]:
        with self._lock:
            rows = self._db.execute("SELECT hash, key, nonce, max_fee, tip, raw, sent_block FROM tx_attempts "
                                    "WHERE key = ? ORDER BY created, rowid", (key,)).fetchall()
        return [Attempt(r[0], r[1], r[2], int(r[3]), int(r[4]), bytes(r[5]), r[6]) for r in rows]

    def mark_sent(self, tx_hash: str, head: int) -> None:
        """The head at the first broadcast: fee bumps count blocks from there, not from rebroadcasts."""
        self._tx(lambda db: db.execute("UPDATE tx_attempts SET sent_block = ? WHERE hash = ? AND sent_block IS NULL",
                                       (head, tx_hash)))

    def set_state(self, key: str, state: TxState, reason: str = "", *, tx_hash: str | None = None,
                  block_number: int | None = None, block_hash: str | None = None, receipt: str | None = None) -> None:
        """Moves an intent; receipt fields are replaced together (all None when a reorg undid the receipt)."""
        self._tx(lambda db: db.execute(
            "UPDATE tx_intents SET state=?, reason=?, tx_hash=?, block_number=?, block_hash=?, receipt=?, updated=? "
            "WHERE key=?", (state, reason, tx_hash, block_number, block_hash, receipt, time.time(), key)))

    def set_reason(self, key: str, reason: str) -> None:
        self._tx(lambda db: db.execute("UPDATE tx_intents SET reason=?, updated=? WHERE key=?",
                                       (reason, time.time(), key)))

    def count_by_state(self) -> dict[str, int]:
        with self._lock:
            return dict(self._db.execute("SELECT state, COUNT(*) FROM tx_intents GROUP BY state").fetchall())


def _intent(row: tuple) -> Intent:
    return Intent(row[0], row[1], row[2], bytes(row[3]), int(row[4]), row[5], row[6], TxState(row[7]), row[8],
                  row[9], row[10], row[11], row[12], row[13], row[14])
