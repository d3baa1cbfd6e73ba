"""``gpunode request challenge | demand | audit | reveal-timeout``: matmul-int8 fraud proofs from the command
line (node.requester.proofs does the work). Each prints what was sent, the element, the verdict or the
reveal deadline, and the gas; ``--json`` prints the outcome as one object. Exit 0 when the transaction
went through, whatever the verdict (the output says it); 1 when nothing could be sent.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from node.cli import CliError
from node.requester.commands import Output, requester_from
from node.requester.proofs import ProofOutcome
from node.requester.state import normalise_job_id

if TYPE_CHECKING:
    from node.requester.client import Requester


def element_arg(text: str) -> tuple[int, int]:
    """argparse type: ``i,j`` (row, column of C, from 0)."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"{text!r} is not an element i,j (row and column, from 0)")
    return int(parts[0]), int(parts[1])


def _when(ts: int | None) -> str:
    return "?" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def describe(outcome: ProofOutcome) -> str:
    """One line for people: what happened to the job."""
    at = f"C[{outcome.i}, {outcome.j}]" if outcome.i is not None else "the demanded element"
    if outcome.action == "challenge":
        verdict = ("FRAUD proven: the provider is slashed, the payment refunded and the bond returned"
                   if outcome.fraud else "no fraud: the element is right and the bond went to the provider")
        return f"challenge of {at} (committed {outcome.committed}, expected {outcome.expected}): {verdict}; " \
               f"job {outcome.state}"
    if outcome.action in ("demand", "audit"):
        return f"{outcome.action}: the provider must reveal {at} (expected {outcome.expected}) by " \
               f"{_when(outcome.deadline)}; job {outcome.state}; after that `reveal-timeout {outcome.job_id}`"
    if outcome.action == "reveal-timeout":
        return f"reveal deadline passed unanswered: the provider is slashed; job {outcome.state}"
    verdict = "the revealed element is wrong: FRAUD, the provider is slashed" if outcome.fraud else \
        "the revealed element is right: the job continues"
    return f"reveal of {at}: {verdict}; job {outcome.state}"


def _report(outcome: ProofOutcome, out: Output) -> int:
    for step in outcome.steps:
        out.note(str(step))
    out.say(describe(outcome))
    out.emit(outcome.to_json())
    return 0


def _result_of(req: Requester, job_id: str, result: Path | None) -> Path:
    if result is not None:
        return result
    record = req.store.load(job_id)
    if "result" not in record.notes:
        raise CliError(f"no downloaded result for {job_id}", f"fetch it first (`fetch {job_id}`) or pass --result "
                       f"FILE; without a usable file, `audit {job_id}`")
    return Path(record.notes["result"])


def cmd_challenge(args: argparse.Namespace, out: Output) -> int:
    req = requester_from(args)
    job_id = normalise_job_id(args.job)
    result = _result_of(req, job_id, args.result)
    if args.element is None:
        out.note("locating a wrong element (per-row Freivalds, then the wrong rows multiplied) …")
    return _report(req.proofs.challenge(job_id, result, args.element, force=args.force), out)


def cmd_demand(args: argparse.Namespace, out: Output) -> int:
    req = requester_from(args)
    job_id = normalise_job_id(args.job)
    outcome = req.proofs.demand(job_id, args.element)
    _report(outcome, out)
    return _wait(req, job_id, args.wait, out)


def cmd_audit(args: argparse.Namespace, out: Output) -> int:
    req = requester_from(args)
    job_id = normalise_job_id(args.job)
    outcome = req.proofs.audit(job_id)
    _report(outcome, out)
    return _wait(req, job_id, args.wait, out)


def _wait(req: Requester, job_id: str, wait: int | None, out: Output) -> int:
    """With --wait: follow the demand until the provider reveals or the deadline passes (then time out)."""
    if wait is None:
        return 0
    out.note("waiting for the provider to reveal …")
    return _report(req.proofs.wait_reveal(job_id, timeout=wait), out)


def cmd_reveal_timeout(args: argparse.Namespace, out: Output) -> int:
    req = requester_from(args)
    return _report(req.proofs.reveal_timeout(normalise_job_id(args.job)), out)


def add_commands(command: Callable[..., argparse.ArgumentParser],
                 job: Callable[[argparse.ArgumentParser], argparse.ArgumentParser],
                 duration: Callable[[str], int]) -> None:
    """Adds the four commands to the ``gpunode request`` parser (``command``/``job`` as in cli.py)."""
    p = job(command("challenge", "prove a wrong element of a matmul-int8 result on chain (slashes the provider; "
                    "posts the verifier's challenge bond)", cmd_challenge))
    p.add_argument("--result", type=Path, metavar="FILE", help="the committed result (default: the file `fetch` "
                   "saved)")
    p.add_argument("--element", type=element_arg, metavar="I,J", help="the element to challenge (default: the "
                   "first wrong one, located here)")
    p.add_argument("--force", action="store_true", help="send it even though the element is right here (the bond "
                   "then goes to the provider)")
    for name, text, func in (
            ("demand", "demand that the provider reveal element I,J of a matmul-int8 result (no file needed; posts "
             "the bond)", cmd_demand),
            ("audit", "reveal the job's audit secret: the provider must reveal the element it picks (posts the "
             "bond)", cmd_audit)):
        p = job(command(name, text, func))
        if name == "demand":
            p.add_argument("--element", type=element_arg, required=True, metavar="I,J", help="row, column of C")
        p.add_argument("--wait", type=duration, metavar="TIME", help="then wait this long for the reveal, and "
                       "send reveal-timeout once the deadline passes")
    job(command("reveal-timeout", "slash the provider of a reveal demand left unanswered past its deadline",
                cmd_reveal_timeout))
