"""One job from offer to settlement, the way a requester would do it by hand with the single commands:
sign, serve the input (devnets), pay, post (or send to a provider), follow, fetch, verify, then accept a
right result or act on a wrong one. Behind ``gpunode request run``; a library function so that tests and
scripts drive the same sequence and read the same events.

A wrong matmul-int8 result is proven wrong on chain (node.requester.proofs: one element recomputed by the
verifier contract slashes the provider, no arbiter), and one that cannot be downloaded or is not the
committed file is audited (the provider must reveal the element the offer's audit secret picks, or is
slashed at the deadline). Float work (torch-export) has no single right answer: it is disputed, and the
market's arbiter (mediators) decides.

Each step reports an event (a name, a line for people, and fields for scripts) through ``emit``; nothing is
printed here. The input server, when used, runs until the result is in: a provider fetches the input after
claiming, possibly after restarts, and only a submitted result shows it no longer needs it.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.chain import fraud
from node.chain.offers import ZERO_ADDRESS
from node.chain.provider import Step
from node.requester.client import Requester
from node.requester.errors import RequesterError
from node.requester.serve import InputServer
from node.requester.terms import MATMUL
from node.requester.verify import Report

#: emit(event, message, fields): "serving", "signed", "approved", "posted" or "sent", "state" (each change),
#: "fetched", "verified", then "accepted", "disputed", "challenged" (matmul-int8: a fraud proof) or "settled"
#: (the window had closed). matmul-int8 without a usable result: "unfetched", "audit" (or "demand"), then
#: "slashed" or "revealed".
Emit = Callable[[str, str, dict[str, Any]], None]
WAIT_MARGIN_S = 300  # beyond the offer's expiry + duration, for blocks and the provider's submit to land
PROOF_MARGIN_S = 120  # of the challenge window, kept for an audit when the result cannot be downloaded


@dataclass(frozen=True)
class JobSpec:
    """What to ask for and what to pay: build_offer's arguments."""

    workload: str
    params: bytes
    payment: int
    bond: int = 0
    max_duration: int = 3600
    expires_in: int = 3600
    nonce: int | None = None
    provider: str = ZERO_ADDRESS
    input_path: Path | None = None
    input_uri: str = ""


@dataclass
class Outcome:
    job_id: str
    state: str
    result: Path | None = None
    report: Report | None = None
    steps: list[Step] = field(default_factory=list)
    fraud: bool | None = None  # the verifier contract's verdict, when a fraud proof or an audit was sent

    @property
    def wrong(self) -> bool:
        """The provider's result was checked and is wrong, or the verifier contract found it fraudulent."""
        return (self.report is not None and not self.report.ok) or self.fraud is True


def _quiet(event: str, message: str, fields: dict[str, Any]) -> None:
    return None


def run_job(req: Requester, spec: JobSpec, *, serve: bool = False, serve_host: str = "127.0.0.1",
            send_to: str | None = None, permit: bool = False, out: Path | None = None, endpoint: str | None = None,
            timeout: float | None = None, settle: bool = True, rtol: float | None = None, atol: float | None = None,
            emit: Emit = _quiet) -> Outcome:
    """Runs the whole job; see the module docstring. ``settle`` False stops after the verdict. Returns the
    outcome (``wrong`` when the result failed verification, after disputing it if settling)."""
    if serve and spec.input_path is None:
        raise RequesterError("--serve serves the job's input file, and none is given", "pass --input FILE")
    if serve and spec.input_uri:
        raise RequesterError("--serve makes the input URL; do not also pass --input-uri")
    with contextlib.ExitStack() as stack:
        input_uri = spec.input_uri
        if serve:
            assert spec.input_path is not None
            server = stack.enter_context(InputServer([spec.input_path], host=serve_host))
            input_uri = server.url_for(spec.input_path)
            emit("serving", f"serving {spec.input_path} at {input_uri}", {"url": input_uri})
        signed = req.build_offer(spec.workload, spec.params, payment=spec.payment, bond=spec.bond,
                                 max_duration=spec.max_duration, expires_in=spec.expires_in, nonce=spec.nonce,
                                 provider=spec.provider, input_path=spec.input_path, input_uri=input_uri)
        job_id = "0x" + signed.job_id.hex()
        outcome = Outcome(job_id, "None")
        emit("signed", f"signed offer {job_id} (nonce {signed.offer.nonce}, expires at {signed.offer.expiry})",
             {"job_id": job_id, "nonce": signed.offer.nonce, "expiry": signed.offer.expiry,
              "offer": signed.to_json()})
        step = req.ensure_allowance(spec.payment, permit=permit)
        if step is not None:
            outcome.steps.append(step)
            emit("approved", f"{step.name}: the market may take the payment — {step}",
                 {"tx": step.tx_hash, "how": step.name})
        if send_to:
            reply = req.send(signed, send_to)
            if not reply.get("accepted"):
                raise RequesterError(f"{send_to} refused the offer: {reply.get('code')}: {reply.get('reason')}")
            emit("sent", f"sent to {send_to}: accepted ({reply.get('state')})", {"url": send_to, "reply": reply})
        else:
            _, step = req.post(signed)
            outcome.steps.append(step)
            emit("posted", f"posted on chain — {step}", {"tx": step.tx_hash})

        def on_state(job: dict[str, Any]) -> None:
            emit("state", f"job {job['state']}", {"job_id": job_id, "state": job["state"], "due": job["due"]})

        limit = timeout if timeout is not None else spec.expires_in + spec.max_duration + WAIT_MARGIN_S
        # Finalized too: with a short challenge window the provider may finalize between two polls
        job = req.wait(job_id, {"Submitted", "Finalized"}, timeout=limit, progress=on_state)
        outcome.state = job["state"]
        target = out or req.store.root / "results" / f"{job_id}{_suffix(spec.workload)}"
        provable = settle and _provable(req, spec.workload)
        try:
            # a fraud proof must land inside the challenge window: stop waiting for the file in time for it
            fetch_limit = min(limit, max(1.0, job["due"] - req.now() - PROOF_MARGIN_S)) if provable else limit
            outcome.result = req.fetch(job_id, target, timeout=fetch_limit, endpoint=endpoint)
        except RequesterError as exc:
            if not provable or req.job(job_id)["state"] != "Submitted":
                raise
            emit("unfetched", f"no usable result: {exc}", {"error": str(exc)})
            return _audit(req, outcome, emit)
    emit("fetched", f"downloaded {outcome.result} ({outcome.result.stat().st_size:,} bytes); its Merkle root is the "
         f"one on chain ({job['resultRoot']})", {"path": str(outcome.result), "root": job["resultRoot"]})
    report = req.verify(job_id, outcome.result, rtol=rtol, atol=atol)
    outcome.report = report
    emit("verified", f"{'RIGHT' if report.ok else 'WRONG'}: {report.detail}", {"report": report.to_json()})
    outcome.state = req.job(job_id)["state"]
    if settle and outcome.state != "Submitted":
        emit("settled", f"job {outcome.state} already: too late to accept or dispute", {"state": outcome.state})
    elif settle and not report.ok and provable:
        first = report.metrics.get("first_wrong")
        element = (first["row"], first["col"]) if first else None
        proof = req.proofs.challenge(job_id, outcome.result, element)
        outcome.steps.extend(proof.steps)
        outcome.state, outcome.fraud = proof.state, proof.fraud
        emit("challenged", f"challenged C[{proof.i}, {proof.j}] (committed {proof.committed}, expected "
             f"{proof.expected}): {'fraud proven' if proof.fraud else 'no fraud'}; job {proof.state} — "
             f"{proof.steps[-1]}", proof.to_json())
    elif settle:
        step = req.accept(job_id) if report.ok else req.dispute(job_id)
        outcome.steps.append(step)
        outcome.state = req.job(job_id)["state"]
        emit("accepted" if report.ok else "disputed", f"{step.name}: job {outcome.state} — {step}",
             {"tx": step.tx_hash, "state": outcome.state})
    return outcome


def _provable(req: Requester, workload: str) -> bool:
    """Whether a wrong result of this job is proven on chain (matmul-int8 with a verifier deployed) rather
    than disputed before the arbiter."""
    return workload == MATMUL and bool(getattr(req.chain.deployment, "verifier", None))


def _audit(req: Requester, outcome: Outcome, emit: Emit) -> Outcome:
    """No usable result (never served, or not the committed one): the provider must reveal the element the
    audit secret picks (a random element when the record has no secret), else it is slashed at the
    deadline. The outcome's ``fraud`` is the verdict."""
    proofs, job_id = req.proofs, outcome.job_id
    record = req.store.find(job_id)
    if record is not None and record.audit_secret is not None:
        demand = proofs.audit(job_id)
    else:
        params = fraud.MatmulParams.from_params(record.params) if record else None
        if params is None:
            raise RequesterError(f"no record of job {job_id}: nothing to audit it with")
        demand = proofs.demand(job_id, divmod(secrets.randbelow(params.m * params.n), params.n))
    outcome.steps.extend(demand.steps)
    outcome.state = demand.state
    emit(demand.action, f"{demand.action}: the provider must reveal C[{demand.i}, {demand.j}] by {demand.deadline} "
         f"— {demand.steps[-1]}", demand.to_json())
    window = int(proofs.verifier.functions.revealWindow().call())
    verdict = proofs.wait_reveal(job_id, timeout=window + WAIT_MARGIN_S)
    outcome.steps.extend(verdict.steps)
    outcome.state, outcome.fraud = verdict.state, verdict.fraud
    what = "no reveal before the deadline" if verdict.action == "reveal-timeout" else "revealed"
    verdict_text = "fraud, the provider is slashed" if verdict.fraud else "the element is right"
    emit("slashed" if verdict.fraud else "revealed", f"{what}: {verdict_text}; job {verdict.state}",
         verdict.to_json())
    return outcome


def _suffix(workload: str) -> str:
    return ".safetensors" if workload.startswith("torch-export") else ".bin"
