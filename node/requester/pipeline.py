"""One job from offer to settlement, the way a requester would do it by hand with the single commands:
sign, serve the input (devnets), pay, post (or send to a provider), follow, fetch, verify, then accept a
right result or dispute a wrong one. Behind ``gpunode request run``; a library function so that tests and
scripts drive the same sequence and read the same events.

Each step reports an event (a name, a line for people, and fields for scripts) through ``emit``; nothing is
printed here. The input server, when used, runs until the result is in: a provider fetches the input after
claiming, possibly after restarts, and only a submitted result shows it no longer needs it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.chain.offers import ZERO_ADDRESS
from node.chain.provider import Step
from node.requester.client import Requester
from node.requester.errors import RequesterError
from node.requester.serve import InputServer
from node.requester.verify import Report

#: emit(event, message, fields): "serving", "signed", "approved", "posted" or "sent", "state" (each change),
#: "fetched", "verified", then "accepted", "disputed" or "settled" (the window had closed).
Emit = Callable[[str, str, dict[str, Any]], None]
WAIT_MARGIN_S = 300  # beyond the offer's expiry + duration, for blocks and the provider's submit to land


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

    @property
    def wrong(self) -> bool:
        """The provider's result was checked and is wrong."""
        return self.report is not None and not self.report.ok


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
        outcome.result = req.fetch(job_id, target, timeout=limit, endpoint=endpoint)
    emit("fetched", f"downloaded {outcome.result} ({outcome.result.stat().st_size:,} bytes); its Merkle root is the "
         f"one on chain ({job['resultRoot']})", {"path": str(outcome.result), "root": job["resultRoot"]})
    report = req.verify(job_id, outcome.result, rtol=rtol, atol=atol)
    outcome.report = report
    emit("verified", f"{'RIGHT' if report.ok else 'WRONG'}: {report.detail}", {"report": report.to_json()})
    outcome.state = req.job(job_id)["state"]
    if settle and outcome.state != "Submitted":
        emit("settled", f"job {outcome.state} already: too late to accept or dispute", {"state": outcome.state})
    elif settle:
        step = req.accept(job_id) if report.ok else req.dispute(job_id)
        outcome.steps.append(step)
        outcome.state = req.job(job_id)["state"]
        emit("accepted" if report.ok else "disputed", f"{step.name}: job {outcome.state} — {step}",
             {"tx": step.tx_hash, "state": outcome.state})
    return outcome


def _suffix(workload: str) -> str:
    return ".safetensors" if workload.startswith("torch-export") else ".bin"
