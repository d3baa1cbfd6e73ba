"""A stand-in for node.service behind the API: a real Journal in a temp dir and a real Metrics, with just
enough offer handling to tell accepted, refused and malformed offers apart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from eth_account import Account

from node.api.server import OfferReply
from node.config import ApiSettings, Settings
from node.jobs.journal import JobSource, Journal
from node.jobs.state import JobState
from node.metrics import Metrics

REQUESTER = Account.from_key("0x" + "11" * 32)
STRANGER = Account.from_key("0x" + "22" * 32)
PROVIDER = "0x" + "ab" * 20
CHAIN_ID = 31337
WINDOW_S = 60

_PATH = [JobState.VALIDATED, JobState.CLAIMED, JobState.FETCHING, JobState.RUNNING, JobState.COMMITTED,
         JobState.SUBMITTED]


def job_id(n: int) -> str:
    return "0x" + f"{n:064x}"


class FakeNode:
    def __init__(self, tmp: Path) -> None:
        self.journal = Journal(tmp / "node.db")
        self.metrics = Metrics()
        self.settings = Settings(api=ApiSettings(signature_window_s=WINDOW_S))
        self.provider = PROVIDER
        self.chain_id = CHAIN_ID
        self.market = "0x" + "cd" * 20
        self.results = tmp / "results"
        self.results.mkdir()
        self.checks: dict[str, tuple[bool, str]] = {"chain": (True, "head 12"), "devices": (True, "cpu")}
        self.readiness_error: Exception | None = None
        self.status_doc: dict[str, Any] = {"node": {"name": "test", "accepting": True}, "jobs": {"open": 0}}
        self.status_error: Exception | None = None
        self.bodies: list[bytes] = []

    async def readiness(self) -> dict[str, tuple[bool, str]]:
        if self.readiness_error is not None:
            raise self.readiness_error
        return self.checks

    def status(self) -> dict:
        if self.status_error is not None:
            raise self.status_error
        return self.status_doc

    async def submit_offer(self, body: bytes) -> OfferReply:
        self.bodies.append(body)
        try:
            offer = json.loads(body)
            n, workload = int(offer["n"]), str(offer["workload"])
        except (ValueError, KeyError, TypeError):
            return OfferReply(False, None, None, "malformed", "not an offer")
        jid = job_id(n)
        self.journal.record_seen(jid, requester=REQUESTER.address, provider=PROVIDER, workload=workload,
                                 payment=10**18, bond=0, expiry=2_000_000_000, offer_json=offer,
                                 source=JobSource.DIRECT)
        if workload != "matmul_int8":
            self.journal.transition(jid, JobState.REJECTED, reason=f"workload {workload} is disabled",
                                    code="workload_disabled")
            return OfferReply(False, jid, "rejected", "workload_disabled", f"workload {workload} is disabled")
        rec = self.journal.transition(jid, JobState.VALIDATED, reason="checks passed")
        return OfferReply(True, jid, rec.state.value, None, "checks passed")

    def result_file(self, job_id: str) -> Path | None:
        rec = self.journal.get(job_id)
        return None if rec is None or rec.result_path is None else Path(rec.result_path)

    def add_job(self, n: int, state: JobState, *, requester: str = REQUESTER.address, data: bytes = b"") -> str:
        """A job walked through the legal states up to ``state`` (committed and later carry a result file)."""
        jid = job_id(n)
        self.journal.record_seen(jid, requester=requester, provider=PROVIDER, workload="matmul_int8",
                                 payment=5 * 10**18 + n, bond=10**17, expiry=2_000_000_000,
                                 offer_json={"n": n}, source=JobSource.CHAIN)
        if state is JobState.REJECTED:
            self.journal.transition(jid, state, reason="below the price floor", code="below_price_floor")
            return jid
        for step in _PATH[:_PATH.index(state) + 1]:
            fields: dict[str, Any] = {}
            if step is JobState.CLAIMED:
                fields["deadline"] = 1_900_000_000
            if step is JobState.FETCHING:
                fields["device"] = "cpu"
            if step is JobState.COMMITTED:
                path = self.results / f"{n}.bin"
                path.write_bytes(data)
                fields |= {"result_root": "0x" + f"{n + 0xabc:064x}", "result_path": path}
            self.journal.transition(jid, step, reason=f"test: {step}", **fields)
        return jid
