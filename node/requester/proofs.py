"""The requester's fraud proofs for matmul-int8 jobs, sent to the MatmulInt8Verifier contract.

A matmul-int8 result has one right answer, so a wrong one needs no arbiter: the contract recomputes one
element from the job's params (and, for supplied inputs, one row of A and one column of B proven against
the offer's ``ab_root``) and compares it with the provider's committed chunk. Four actions, each one
transaction from the requester's key, each posting the verifier's ``challengeBond`` (approved first):

- ``challenge``: the requester holds the committed result and names a wrong element (located by
  node.requester.challenge, or given); fraud slashes the provider in the same transaction and returns the
  bond; a right element sends the bond to the provider's payout address instead.
- ``demand``: the requester has no usable file (never served, or not the committed one) and names an
  element; the provider must reveal its chunk within the verifier's reveal window.
- ``audit``: a demand at the element the requester's audit secret picks (the offer committed to its hash
  and the position depends on the result root too, so neither side could choose it alone).
- ``reveal_timeout``: an unanswered demand after its deadline slashes the provider.

The proofs themselves (canonical params, chunk proofs, input proofs, audit positions) are built by
node.chain.fraud, shared with the provider's node and the simulations, so both sides agree on every byte.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from web3.logs import DISCARD

from node.chain import fraud
from node.chain.contracts import load_abi
from node.chain.provider import Step, tokens
from node.compute.commitment import commit_file
from node.requester.challenge import WrongElement, element_of, locate_file
from node.requester.errors import RequesterError
from node.requester.state import JobRecord, normalise_job_id
from node.requester.terms import MATMUL, file_sha256, input_matrices

if TYPE_CHECKING:
    from node.requester.client import Requester

ZERO_ADDRESS = "0x" + "00" * 20


@dataclass
class ProofOutcome:
    """What one action did: the element, the verdict (None while a demand awaits its reveal), the job's
    state afterwards, and the transactions (an approve of the bond, then the action)."""

    action: str
    job_id: str
    state: str
    i: int | None = None
    j: int | None = None
    fraud: bool | None = None
    committed: int | None = None
    expected: int | None = None
    deadline: int | None = None
    steps: list[Step] = field(default_factory=list)

    @property
    def gas_used(self) -> int:
        return self.steps[-1].gas_used if self.steps else 0

    def to_json(self) -> dict[str, Any]:
        return {"action": self.action, "job_id": self.job_id, "state": self.state, "i": self.i, "j": self.j,
                "fraud": self.fraud, "committed": self.committed, "expected": self.expected,
                "deadline": self.deadline, "gas_used": self.gas_used,
                "steps": [{"name": s.name, "tx": s.tx_hash, "gas_used": s.gas_used, "fee_wei": str(s.fee_wei)}
                          for s in self.steps]}


@dataclass(frozen=True)
class _Job:
    record: JobRecord
    params: fraud.MatmulParams
    chain: dict[str, Any]

    @property
    def offer(self) -> dict[str, Any]:
        return self.record.signed.offer.as_struct()

    @property
    def root(self) -> bytes:
        return bytes.fromhex(self.chain["resultRoot"][2:])

    @property
    def plain(self) -> dict[str, Any]:
        """The params as node.requester.challenge reads them (the audit and ab_root keys aside)."""
        p = self.params
        return {"m": p.m, "k": p.k, "n": p.n, **({"input": "safetensors"} if p.supplied else {"seed": p.seed})}


class FraudProofs:
    """The verifier actions of one Requester (its key, chain, state dir)."""

    def __init__(self, req: Requester) -> None:
        self.req = req
        address = getattr(req.chain.deployment, "verifier", None)
        if not address:
            raise RequesterError("this deployment has no MatmulInt8Verifier (deployments file without "
                                 "\"verifier\")", "redeploy with this version, or use `dispute`")
        self.verifier = req.w3.eth.contract(address=address, abi=load_abi(fraud.VERIFIER))

    # -- reading ----------------------------------------------------------------------------------------------
    def bond(self) -> int:
        return int(self.verifier.functions.challengeBond().call())

    def pending(self, job_id: str) -> dict[str, Any] | None:
        """The open reveal demand on a job (challenger, deadline, i, j, expected, bond), or None."""
        call = self.verifier.functions.demands(bytes.fromhex(normalise_job_id(job_id)[2:]))
        values = call.call()
        names = [o["name"] for o in call.abi["outputs"]]
        if len(names) == 1 and call.abi["outputs"][0].get("components"):  # returned as one struct
            names = [c["name"] for c in call.abi["outputs"][0]["components"]]
            values = values if isinstance(values, list | tuple) and len(values) == len(names) else values[0]
        demand = dict(zip(names, values, strict=True))
        return None if int(demand["challenger"], 16) == 0 else demand

    def _job(self, job_id: str, *, need_state: str | None = "Submitted") -> _Job:
        job_id = normalise_job_id(job_id)
        record = self.req.store.load(job_id)
        if record.workload != MATMUL:
            raise RequesterError(f"job {job_id} is {record.workload}: fraud proofs are for {MATMUL}",
                                 "`dispute` it instead (mediators decide float work)")
        try:
            params = fraud.MatmulParams.from_params(record.params)
        except fraud.FraudProofError as exc:
            raise RequesterError(f"job {job_id}'s params allow no fraud proof: {exc}", "`dispute` it instead") \
                from None
        chain = self.req.job(job_id)
        if need_state and chain["state"] != need_state:
            raise RequesterError(f"job {job_id} is {chain['state']}, not {need_state}")
        if need_state == "Submitted" and self.req.now() >= chain["due"]:
            raise RequesterError(f"the challenge window of job {job_id} closed at {chain['due']}")
        return _Job(record, params, chain)

    def _inputs(self, job: _Job, i: int, j: int) -> tuple[bytes, list[bytes], bytes, list[bytes]]:
        """SuppliedInputs for C[i, j]: empty for a seed job, else row i and column j of the recorded input."""
        p = job.params
        if not p.supplied:
            return fraud.EMPTY_INPUTS
        path = Path(job.record.input_path) if job.record.input_path else None
        if path is None or not path.is_file():
            raise RequesterError(f"the input file of job {job.record.job_id} ({path}) is gone: the proof needs "
                                 "row i of A and column j of B from it")
        if file_sha256(path) != job.record.signed.offer.inputHash:
            raise RequesterError(f"{path} changed since the offer was signed: it is not the job's input")
        try:
            return fraud.supplied_inputs(*input_matrices(path, p.m, p.k, p.n), p, i, j)
        except fraud.FraudProofError as exc:
            raise RequesterError(f"{path}: {exc}") from None

    # -- sending ----------------------------------------------------------------------------------------------
    def ensure_bond(self) -> Step | None:
        """Lets the verifier take its challenge bond from the requester (an approve only when needed)."""
        bond, me = self.bond(), self.req.address
        token = self.req.chain.token
        have = int(token.functions.balanceOf(me).call())
        if have < bond:
            decimals = self.req.decimals()
            raise RequesterError(f"the challenge bond is {tokens(bond, decimals)} tokens and {me} holds "
                                 f"{tokens(have, decimals)}")
        if int(token.functions.allowance(me, self.verifier.address).call()) >= bond:
            return None
        return self.req.chain.send(self.req._signer(), token.functions.approve(self.verifier.address, bond),
                                   "approve bond")

    def _send(self, call: Any, name: str, outcome: ProofOutcome, *, bonded: bool = True) -> dict[str, list]:
        if bonded:
            approve = self.ensure_bond()
            if approve is not None:
                outcome.steps.append(approve)
        step = self.req.chain.send(self.req._signer(), call, name)
        outcome.steps.append(step)
        receipt = self.req.w3.eth.get_transaction_receipt(step.tx_hash)
        events = {}
        for event in ("Challenged", "RevealDemanded", "Audited", "RevealTimedOut", "ChunkRevealed"):
            events[event] = [e["args"] for e in
                             getattr(self.verifier.events, event)().process_receipt(receipt, errors=DISCARD)]
        outcome.state = self.req.job(outcome.job_id)["state"]
        return events

    def challenge(self, job_id: str, result: Path, element: tuple[int, int] | None = None, *,
                  force: bool = False) -> ProofOutcome:
        """Proves C[i, j] of the committed ``result`` wrong in one transaction. Without ``element`` the first
        wrong element is located; with it, a right element is refused unless ``force`` (the bond would go to
        the provider)."""
        job = self._job(job_id)
        if commit_file(result).root != job.root:
            raise RequesterError(f"{result} is not the result committed on chain (root {job.chain['resultRoot']})",
                                 f"`fetch {job.record.job_id}` it, or `audit` the job if it cannot be fetched")
        input_path = Path(job.record.input_path) if job.record.input_path else None
        if element is None:
            wrong = locate_file(job.plain, input_path, result, limit=1)
            if not wrong:
                raise RequesterError(f"{result} is A @ B: every element is right, there is nothing to challenge")
            found: WrongElement = wrong[0]
        else:
            found = element_of(job.plain, input_path, result, *element)
            if found.committed == found.expected and not force:
                raise RequesterError(f"C[{found.i}, {found.j}] = {found.committed} is right: the challenge would "
                                     "fail and the bond go to the provider", "pass --force to send it anyway")
        i, j = found.i, found.j
        chunk, proof = fraud.result_chunk(result, job.params, i, j)
        call = self.verifier.functions.challenge(job.offer, job.params.as_abi(), i, j, self._inputs(job, i, j),
                                                 chunk, proof)
        outcome = ProofOutcome("challenge", job.record.job_id, "", i, j, committed=found.committed,
                               expected=found.expected)
        events = self._send(call, "challenge", outcome)
        for ev in events["Challenged"]:
            outcome.fraud, outcome.committed, outcome.expected = ev["fraud"], ev["committed"], ev["expected"]
        self._note(outcome)
        return outcome

    def demand(self, job_id: str, element: tuple[int, int]) -> ProofOutcome:
        """Demands that the provider reveal the chunk holding C[i, j] (no result file needed)."""
        job = self._job(job_id)
        i, j = element
        try:
            job.params.check_index(i, j)
        except fraud.FraudProofError as exc:
            raise RequesterError(str(exc)) from None
        call = self.verifier.functions.demandReveal(job.offer, job.params.as_abi(), i, j, self._inputs(job, i, j))
        return self._demanded("demand", job, call, i, j)

    def audit(self, job_id: str) -> ProofOutcome:
        """Reveals the job's audit secret: a demand at the element it picks with the committed root."""
        job = self._job(job_id)
        if job.params.audit is None:
            raise RequesterError(f"the offer of job {job.record.job_id} made no audit commitment",
                                 "`demand` an element instead")
        if job.record.audit_secret is None:
            raise RequesterError(f"no audit secret is recorded for job {job.record.job_id} (its params carried "
                                 "an audit commitment made elsewhere)", "`demand` an element instead")
        secret = bytes.fromhex(job.record.audit_secret[2:])
        if fraud.audit_commitment(secret) != job.params.audit:
            raise RequesterError(f"the recorded audit secret of job {job.record.job_id} does not match the "
                                 "offer's commitment")
        i, j = fraud.audit_position(job.params, secret, job.root)
        call = self.verifier.functions.audit(job.offer, job.params.as_abi(), secret, self._inputs(job, i, j))
        return self._demanded("audit", job, call, i, j)

    def _demanded(self, action: str, job: _Job, call: Any, i: int, j: int) -> ProofOutcome:
        outcome = ProofOutcome(action, job.record.job_id, "", i, j)
        events = self._send(call, "demandReveal" if action == "demand" else "audit", outcome)
        for ev in events["RevealDemanded"]:
            outcome.i, outcome.j, outcome.deadline = ev["i"], ev["j"], ev["deadline"]
        demand = self.pending(job.record.job_id)
        if demand is not None:
            outcome.expected = int(demand["expected"])
        self._note(outcome)
        return outcome

    def reveal_timeout(self, job_id: str) -> ProofOutcome:
        """Slashes the provider of a demand left unanswered past its deadline (anyone may send it)."""
        job = self._job(job_id, need_state="Challenged")
        demand = self.pending(job.record.job_id)
        if demand is None:
            raise RequesterError(f"job {job.record.job_id} has no open reveal demand")
        if self.req.now() <= demand["deadline"]:
            raise RequesterError(f"the provider may still reveal until {demand['deadline']} (chain time now "
                                 f"{self.req.now()})")
        outcome = ProofOutcome("reveal-timeout", job.record.job_id, "", demand["i"], demand["j"],
                               expected=int(demand["expected"]), deadline=demand["deadline"])
        events = self._send(self.verifier.functions.revealTimeout(job.offer), "revealTimeout", outcome,
                            bonded=False)
        outcome.fraud = bool(events["RevealTimedOut"]) or outcome.state == "Slashed"
        self._note(outcome)
        return outcome

    def wait_reveal(self, job_id: str, *, timeout: float, poll_s: float | None = None) -> ProofOutcome:
        """Waits for the provider to answer the open demand; past the deadline sends ``reveal_timeout``.
        The outcome's ``fraud`` is the verdict (the revealed element, when there was one, is in the
        ChunkRevealed event; ``state`` is Slashed or back to Submitted)."""
        job_id = normalise_job_id(job_id)
        give_up = time.monotonic() + timeout
        demand = self.pending(job_id)
        while demand is not None:
            if self.req.now() > demand["deadline"]:
                return self.reveal_timeout(job_id)
            if time.monotonic() >= give_up:
                raise RequesterError(f"timed out after {timeout:g} s waiting for the provider to reveal (the "
                                     f"deadline is {demand['deadline']})", f"`reveal-timeout {job_id}` after it")
            time.sleep(self.req.poll_s if poll_s is None else poll_s)
            demand = self.pending(job_id)
        state = self.req.job(job_id)["state"]
        outcome = ProofOutcome("reveal", job_id, state, fraud=state == "Slashed")
        since, match = self.req.chain.deployment.deploy_block, {"jobId": bytes.fromhex(job_id[2:])}
        demanded = self.verifier.events.RevealDemanded().get_logs(from_block=since, argument_filters=match)
        if demanded:
            outcome.i, outcome.j = demanded[-1]["args"]["i"], demanded[-1]["args"]["j"]
        revealed = self.verifier.events.ChunkRevealed().get_logs(from_block=since, argument_filters=match)
        if revealed:
            last = revealed[-1]["args"]
            outcome.committed, outcome.expected, outcome.fraud = last["committed"], last["expected"], last["fraud"]
        self._note(outcome)
        return outcome

    def _note(self, outcome: ProofOutcome) -> None:
        notes = self.req.store.find(outcome.job_id)
        history = list(notes.notes.get("proofs", [])) if notes else []
        history.append({k: v for k, v in outcome.to_json().items() if k != "job_id"})
        self.req.store.note(outcome.job_id, proofs=history)
