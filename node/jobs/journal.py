"""The job journal: every job the node has heard of, its current state, and every move it made, in SQLite.

The journal stores states; it does not decide them. Each move is checked against ``node.jobs.state``
and written together with its audit row (time, reason, optional machine code) in one transaction, so
after a crash the job's state and its history always agree. A restart resumes ``open_jobs()``; the owner
reads ``history()``; a claimed job past its deadline shows up in ``overdue()`` instead of vanishing.

Moves are idempotent for retries (moving to the state the job is already in writes nothing) and can be
compare-and-set (``expect=``), so two tasks racing on one job cannot both win. All methods are synchronous
and short (they fsync); async callers run them through ``asyncio.to_thread``. Tables carry the ``job_``
prefix because the node's other components keep their own tables in the same file.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from node.jobs.state import TERMINAL, UNDER_DEADLINE, IllegalTransition, JobState, check
from node.sqlite import open_sqlite, write_transaction

UINT256_MAX = 2**256 - 1
UINT64_MAX = 2**64 - 1


class JobSource(StrEnum):
    CHAIN = "chain"  # an OfferPosted event: the escrow is on chain, claimed with claim()
    DIRECT = "direct"  # a signed offer sent to our API, claimed with claimSigned()


class UnknownJob(LookupError):
    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"job {job_id} is not in the journal")


class StaleState(Exception):
    """A compare-and-set move found the job in another state than the caller expected."""

    def __init__(self, job_id: str, expected: JobState, actual: JobState) -> None:
        self.job_id, self.expected, self.actual = job_id, expected, actual
        super().__init__(f"job {job_id}: expected state {expected}, found {actual}")


@dataclass(frozen=True)
class JobRecord:
    job_id: str
    state: JobState
    requester: str
    provider: str  # the offer's addressed provider; the zero address for an open offer
    workload: str
    payment: int
    bond: int
    deadline: int | None  # unix seconds; set when claimed
    expiry: int  # unix seconds after which the offer can no longer be claimed
    offer_json: str  # the signed offer as it came over the wire
    source: JobSource
    result_root: str | None
    result_path: str | None
    device: str | None
    reason: str  # of the latest move
    code: str | None  # of the latest move
    created: float
    updated: float

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL


@dataclass(frozen=True)
class Transition:
    id: int
    job_id: str
    from_state: JobState | None  # None for the first row (the job was seen)
    to_state: JobState
    at: float
    reason: str
    code: str | None


_SCHEMA = """
CREATE TABLE IF NOT EXISTS job_jobs (
    job_id TEXT PRIMARY KEY, state TEXT NOT NULL, requester TEXT NOT NULL, provider TEXT NOT NULL,
    workload TEXT NOT NULL, payment TEXT NOT NULL, bond TEXT NOT NULL, deadline INTEGER, expiry INTEGER NOT NULL,
    offer_json TEXT NOT NULL, source TEXT NOT NULL, result_root TEXT, result_path TEXT, device TEXT,
    reason TEXT NOT NULL, code TEXT, created REAL NOT NULL, updated REAL NOT NULL);
CREATE INDEX IF NOT EXISTS job_jobs_state ON job_jobs(state, created);
CREATE TABLE IF NOT EXISTS job_transitions (
    id INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL REFERENCES job_jobs(job_id),
    from_state TEXT, to_state TEXT NOT NULL, at REAL NOT NULL, reason TEXT NOT NULL, code TEXT);
CREATE INDEX IF NOT EXISTS job_transitions_job ON job_transitions(job_id, id);
"""
_COLS = ("job_id, state, requester, provider, workload, payment, bond, deadline, expiry, offer_json, source, "
         "result_root, result_path, device, reason, code, created, updated")
_TERMINAL_SQL = ", ".join(f"'{s}'" for s in sorted(TERMINAL))
_UNDER_DEADLINE_SQL = ", ".join(f"'{s}'" for s in sorted(UNDER_DEADLINE))

_HEX32 = re.compile(r"0x[0-9a-fA-F]{64}")
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_CODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")


def _uint(value: Any, name: str, hi: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= hi:
        raise ValueError(f"{name} must be an integer in 0..{hi}, got {value!r}")
    return value


def _text(value: Any, name: str, *, empty_ok: bool = False) -> str:
    if not isinstance(value, str) or not (empty_ok or value.strip()):
        raise ValueError(f"{name} must be a{'' if empty_ok else ' non-empty'} string, got {value!r}")
    return value


def _hex32(value: Any, name: str) -> str:
    if isinstance(value, bytes | bytearray) and len(value) == 32:
        return "0x" + bytes(value).hex()
    if isinstance(value, str) and _HEX32.fullmatch(value):
        return value.lower()
    raise ValueError(f"{name} must be 32 bytes as 0x-prefixed hex (66 characters), got {value!r}")


def job_key(job_id: str | bytes) -> str:
    """The journal's form of a job id: lower-case 0x-hex of its 32 bytes."""
    return _hex32(job_id, "job id")


def _address(value: Any, name: str) -> str:
    if not isinstance(value, str) or not _ADDRESS.fullmatch(value):
        raise ValueError(f"{name} must be a 0x-prefixed address of 40 hex digits, got {value!r}")
    return value.lower()


def _code(value: Any) -> str | None:
    if value is not None and not (isinstance(value, str) and _CODE.fullmatch(value)):
        raise ValueError(f"code must be None or a short machine code like 'price_below_floor', got {value!r}")
    return None if value is None else str(value)


def _offer_json(value: Any) -> str:
    if isinstance(value, Mapping):
        return json.dumps(dict(value), separators=(",", ":"))
    if isinstance(value, str):
        try:
            if isinstance(json.loads(value), dict):
                return value
        except ValueError:
            pass
    raise ValueError("offer_json must be the offer's wire JSON object (a JSON string or a mapping)")


# Columns a move may set, each with its check. Values can be set, never cleared.
_FIELDS: dict[str, Callable[[Any], Any]] = {
    "deadline": lambda v: _uint(v, "deadline", UINT64_MAX),
    "result_root": lambda v: _hex32(v, "result_root"),
    "result_path": lambda v: _text(str(v) if isinstance(v, Path) else v, "result_path"),
    "device": lambda v: _text(v, "device"),
}
# What a job must carry once in a state: a claim without a deadline could never be reported overdue.
_REQUIRED: dict[JobState, tuple[str, ...]] = {JobState.CLAIMED: ("deadline",), JobState.COMMITTED: ("result_root",)}


class Journal:
    def __init__(self, path: Path | str, *, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self._clock = clock
        self._lock = threading.Lock()
        self._db = open_sqlite(self.path, _SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _tx(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        return write_transaction(self._db, self._lock, fn)

    def _read(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # ------------------------------------------------------------------------------------------ writes

    def record_seen(self, job_id: str | bytes, *, requester: str, provider: str, workload: str | bytes,
                    payment: int, bond: int, expiry: int, offer_json: str | Mapping[str, Any],
                    source: JobSource | str, reason: str = "") -> bool:
        """Stores a newly heard-of job as seen; False (and nothing written) if the journal already knows it,
        so a replayed event or a resent direct offer is harmless."""
        key = job_key(job_id)
        try:
            src = JobSource(source)
        except ValueError:
            raise ValueError(f"source must be one of {', '.join(JobSource)}, got {source!r}") from None
        row = (key, JobState.SEEN.value, _address(requester, "requester"), _address(provider, "provider"),
               _hex32(workload, "workload") if isinstance(workload, bytes) else _text(workload, "workload"),
               str(_uint(payment, "payment", UINT256_MAX)), str(_uint(bond, "bond", UINT256_MAX)),
               _uint(expiry, "expiry", UINT64_MAX), _offer_json(offer_json), src.value)
        why = _text(reason, "reason", empty_ok=True).strip() or (
            "offer posted on chain" if src is JobSource.CHAIN else "direct offer received")
        now = self._clock()

        def write(db: sqlite3.Connection) -> bool:
            cur = db.execute("INSERT OR IGNORE INTO job_jobs (job_id, state, requester, provider, workload, payment, "
                             "bond, expiry, offer_json, source, reason, created, updated) "
                             "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", (*row, why, now, now))
            if cur.rowcount == 0:
                return False
            db.execute("INSERT INTO job_transitions (job_id, from_state, to_state, at, reason, code) "
                       "VALUES (?, NULL, ?, ?, ?, NULL)", (key, JobState.SEEN.value, now, why))
            return True

        return self._tx(write)

    def transition(self, job_id: str | bytes, to: JobState | str, *, reason: str, code: str | None = None,
                   expect: JobState | str | None = None, **fields: Any) -> JobRecord:
        """Moves a job to ``to`` and records why, in one transaction; returns the job as stored.

        Moving to the state the job is already in writes nothing (an idempotent retry); any fields given
        with it must match what is stored. With ``expect`` the move is compare-and-set: StaleState unless
        the job is in exactly that state, even if it is already in ``to``, so only one racer wins.
        ``fields`` may set deadline, result_root, result_path and device.
        """
        key = job_key(job_id)
        target = JobState(to)
        expected = None if expect is None else JobState(expect)
        why = _text(reason, "reason").strip()
        mcode = _code(code)
        unknown = sorted(set(fields) - set(_FIELDS))
        if unknown:
            raise ValueError(f"transition cannot set {', '.join(unknown)}; only {', '.join(_FIELDS)}")
        values = {name: _FIELDS[name](value) for name, value in fields.items()}
        now = self._clock()

        def write(db: sqlite3.Connection) -> JobRecord:
            current = _fetch(db, key)
            if current is None:
                raise UnknownJob(key)
            if expected is not None and current.state is not expected:
                raise StaleState(key, expected, current.state)
            if current.state is target:
                clash = {n: v for n, v in values.items() if getattr(current, n) != v}
                if clash:
                    raise ValueError(f"job {key}: repeated move to {target} with different {', '.join(clash)}")
                return current
            check(current.state, target, key)
            missing = [n for n in _REQUIRED.get(target, ()) if values.get(n, getattr(current, n)) is None]
            if missing:
                raise ValueError(f"job {key}: moving to {target} needs {', '.join(missing)}")
            sets = "".join(f", {n} = ?" for n in values)
            db.execute(f"UPDATE job_jobs SET state = ?, reason = ?, code = ?, updated = ?{sets} WHERE job_id = ?",
                       (target.value, why, mcode, now, *values.values(), key))
            db.execute("INSERT INTO job_transitions (job_id, from_state, to_state, at, reason, code) "
                       "VALUES (?,?,?,?,?,?)", (key, current.state.value, target.value, now, why, mcode))
            return _fetch(db, key)  # type: ignore[return-value]

        return self._tx(write)

    def note(self, job_id: str | bytes, *, reason: str, code: str) -> bool:
        """Adds an event that is not a move (a reveal demand, the reveal sent) to the job's history, as a row
        from its state to the same state. Idempotent: False (nothing written) when the job already has a row
        with this code and reason, so a redelivered event is noted once. UnknownJob if the job is not here."""
        key = job_key(job_id)
        why = _text(reason, "reason").strip()
        mcode = _code(code)
        now = self._clock()

        def write(db: sqlite3.Connection) -> bool:
            current = _fetch(db, key)
            if current is None:
                raise UnknownJob(key)
            if db.execute("SELECT 1 FROM job_transitions WHERE job_id = ? AND code = ? AND reason = ?",
                          (key, mcode, why)).fetchone():
                return False
            db.execute("INSERT INTO job_transitions (job_id, from_state, to_state, at, reason, code) "
                       "VALUES (?,?,?,?,?,?)", (key, current.state.value, current.state.value, now, why, mcode))
            return True

        return self._tx(write)

    # ------------------------------------------------------------------------------------------- reads

    def get(self, job_id: str | bytes) -> JobRecord | None:
        key = job_key(job_id)
        with self._lock:
            return _fetch(self._db, key)

    def history(self, job_id: str | bytes) -> list[Transition]:
        """Every move of the job, and every note (a row from a state to itself), oldest first: the audit trail
        the owner reads."""
        rows = self._read("SELECT id, job_id, from_state, to_state, at, reason, code FROM job_transitions "
                          "WHERE job_id = ? ORDER BY id", (job_key(job_id),))
        return [Transition(r[0], r[1], None if r[2] is None else JobState(r[2]), JobState(r[3]), r[4], r[5], r[6])
                for r in rows]

    def open_jobs(self) -> list[JobRecord]:
        """Every job not in a terminal state, oldest first: what a restarted node resumes."""
        rows = self._read(f"SELECT {_COLS} FROM job_jobs WHERE state NOT IN ({_TERMINAL_SQL}) "
                          "ORDER BY created, rowid")
        return [_record(r) for r in rows]

    def overdue(self, now: float, margin: float = 0.0) -> list[JobRecord]:
        """Jobs we hold a claim on (claimed to committed) whose deadline is before ``now + margin``: they can
        no longer be submitted in time and must be reported. The contract still accepts a submit at the
        deadline second itself, so with no margin a job is overdue only once its deadline is past."""
        rows = self._read(f"SELECT {_COLS} FROM job_jobs WHERE state IN ({_UNDER_DEADLINE_SQL}) "
                          "AND deadline < ? ORDER BY deadline, created", (now + margin,))
        return [_record(r) for r in rows]

    def jobs(self, limit: int = 100, state: JobState | str | None = None) -> list[JobRecord]:
        """The newest jobs first, optionally in one state (for the API and the CLI)."""
        _uint(limit, "limit", 100_000)
        if state is None:
            rows = self._read(f"SELECT {_COLS} FROM job_jobs ORDER BY created DESC, rowid DESC LIMIT ?", (limit,))
        else:
            rows = self._read(f"SELECT {_COLS} FROM job_jobs WHERE state = ? ORDER BY created DESC, rowid DESC "
                              "LIMIT ?", (JobState(state).value, limit))
        return [_record(r) for r in rows]

    def by_state(self) -> dict[str, int]:
        """How many jobs are in each state, every state listed (for metrics)."""
        counts = dict(self._read("SELECT state, COUNT(*) FROM job_jobs GROUP BY state"))
        return {s.value: counts.get(s.value, 0) for s in JobState}


def _fetch(db: sqlite3.Connection, key: str) -> JobRecord | None:
    row = db.execute(f"SELECT {_COLS} FROM job_jobs WHERE job_id = ?", (key,)).fetchone()
    return _record(row) if row else None


def _record(r: tuple) -> JobRecord:
    return JobRecord(r[0], JobState(r[1]), r[2], r[3], r[4], int(r[5]), int(r[6]), r[7], r[8], r[9], JobSource(r[10]),
                     r[11], r[12], r[13], r[14], r[15], r[16], r[17])


__all__ = ["IllegalTransition", "JobRecord", "JobSource", "Journal", "StaleState", "Transition", "UnknownJob",
           "job_key"]
