"""The requester's memory between commands: one JSON file per job it signed.

Commands run minutes or days apart (sign now, fetch tomorrow), and only the requester knows the params,
the input file and where the offer was sent; the chain holds hashes. So every signed offer is written to
``<state dir>/jobs/<job id>.json`` the moment it is signed, before it is posted or sent: a crash after
posting can then never leave a paid job that the tools cannot verify. The files are written owner-only and
atomically, so a reader never sees half a record. The offer is public once posted; the one secret a record
may hold is a matmul-int8 job's audit secret (``audit_secret``): the offer commits to its hash, and only
``request audit`` reveals it, on chain, after the provider has committed its result (were it known earlier,
the provider could compute where the audit will look). It is kept out of ``notes``, which ``status`` prints.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.chain.verify import OfferRejected, SignedOffer
from node.files import write_atomic

DEFAULT_STATE_DIR = Path("~/.gpunode-requester")
_JOB_ID = re.compile(r"0x[0-9a-f]{64}")
_SECRET = re.compile(r"0x[0-9a-f]{64}")


class StateError(RuntimeError):
    """A job record is missing or unreadable; the message names the file."""


@dataclass
class JobRecord:
    """What the requester knows about one job beyond the chain. ``notes`` collects what happened to it
    (tx hashes, where the result was saved, the verdict), for ``status`` and for the user's own records."""

    signed: SignedOffer
    workload: str
    input_path: str | None = None
    provider_url: str | None = None
    created: float = 0.0
    notes: dict[str, Any] = field(default_factory=dict)
    audit_secret: str | None = None  # 0x + 64 hex: the preimage of the params' "audit" commitment

    @property
    def job_id(self) -> str:
        return "0x" + self.signed.job_id.hex()

    @property
    def params(self) -> bytes:
        assert self.signed.params is not None  # records are only made from offers that carry their params
        return self.signed.params

    def to_json(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "workload": self.workload, "signed": self.signed.to_json(),
                "input_path": self.input_path, "provider_url": self.provider_url, "created": self.created,
                "notes": self.notes, "audit_secret": self.audit_secret}

    @classmethod
    def from_json(cls, data: Any) -> JobRecord:
        if not isinstance(data, dict) or not isinstance(data.get("workload"), str):
            raise ValueError("not a job record")
        signed = SignedOffer.from_json(data["signed"])
        if signed.params is None:
            raise ValueError("the record's offer has no params")
        secret = data.get("audit_secret")
        if secret is not None and not (isinstance(secret, str) and _SECRET.fullmatch(secret)):
            raise ValueError("audit_secret is not 0x and 64 hex digits")
        return cls(signed, data["workload"], data.get("input_path"), data.get("provider_url"),
                   float(data.get("created") or 0.0), dict(data.get("notes") or {}), secret)


def normalise_job_id(text: str) -> str:
    """0x + 64 lowercase hex digits, the form records are filed under; ValueError otherwise."""
    value = text.strip().lower()
    if not value.startswith("0x"):
        value = "0x" + value
    if not _JOB_ID.fullmatch(value):
        raise ValueError(f"{text!r} is not a job id (0x and 64 hex digits)")
    return value


class JobStore:
    """The state directory's job records."""

    def __init__(self, root: Path) -> None:
        self.root = root.expanduser()
        self.jobs = self.root / "jobs"

    def path(self, job_id: str) -> Path:
        return self.jobs / f"{normalise_job_id(job_id)}.json"

    def save(self, record: JobRecord) -> Path:
        self.jobs.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self.path(record.job_id)
        write_atomic(path, json.dumps(record.to_json(), indent=2) + "\n")
        return path

    def load(self, job_id: str) -> JobRecord:
        path = self.path(job_id)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise StateError(f"no record of job {normalise_job_id(job_id)} in {self.jobs}: it was not signed "
                             "with these tools and this --state-dir") from None
        except (OSError, ValueError) as exc:
            raise StateError(f"{path}: unreadable job record ({type(exc).__name__})") from None
        try:
            return JobRecord.from_json(data)
        except (OfferRejected, ValueError, TypeError, KeyError) as exc:
            raise StateError(f"{path}: malformed job record: {exc}") from None

    def find(self, job_id: str) -> JobRecord | None:
        return self.load(job_id) if self.path(job_id).is_file() else None

    def note(self, job_id: str, **notes: Any) -> None:
        """Adds facts to a job's record, if there is one (jobs signed elsewhere have none)."""
        record = self.find(job_id)
        if record is not None:
            record.notes.update(notes)
            self.save(record)

    def records(self) -> Iterator[JobRecord]:
        """Every readable record; unreadable files are skipped (they cannot reserve anything anyway)."""
        if not self.jobs.is_dir():
            return
        for path in sorted(self.jobs.glob("0x*.json")):
            try:
                yield JobRecord.from_json(json.loads(path.read_text(encoding="utf-8")))
            except (OSError, ValueError, TypeError, KeyError, OfferRejected):
                continue
