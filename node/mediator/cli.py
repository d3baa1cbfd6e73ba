"""``gpunode mediate``: a mediator checks a disputed job and signs a ruling; anyone submits the rulings.

    gpunode mediate check JOB --result FILE [--bundle FILE]   # re-run, compare, sign -> ruling JSON
    gpunode mediate check JOB --no-result                     # the provider serves no result: rule against it
    gpunode mediate submit JOB RULING.json...                 # threshold reached -> MediatorSet.resolve

Exit codes: 0 done (``check``: the provider was right), 1 error, 2 usage, 3 ``check`` ruled that the provider
was wrong (the ruling is written either way). Keys come from a keystore (password from
$GPUNODE_MEDIATOR_PASSWORD, --password-file or a prompt) or, on devnets, a raw key file; never from the
command line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from node.cli import CliError, address_arg, run_guarded, signer_from_args, tolerance_arg
from node.config import ENV_MEDIATOR_PASSWORD

PROG = "gpunode mediate"
PASSWORD_ENV = ENV_MEDIATOR_PASSWORD
DEFAULT_RPC = "http://127.0.0.1:8545"
EXIT_PROVIDER_WRONG = 3
_MAX_RULING_FILE = 1 << 20


def _globals(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """Options every command takes, before or after its name (after it, they override)."""
    d: dict[str, Any] = {"default": argparse.SUPPRESS} if suppress else {}
    g = parser.add_argument_group("chain and key")
    g.add_argument("--rpc", metavar="URL", help=f"JSON-RPC endpoint (default {DEFAULT_RPC})", **d)
    g.add_argument("--deployments", type=Path, metavar="FILE", help="contract addresses (default "
                   "deployments/<chain id>.json)", **d)
    g.add_argument("--chain-id", type=int, metavar="N", help="refuse an RPC endpoint on another chain", **d)
    g.add_argument("--config", type=Path, metavar="FILE", help="take the chain from a gpunode config's [chain] "
                   "section instead", **d)
    g.add_argument("--max-fee-gwei", type=float, metavar="GWEI", help="never bid more per gas", **d)
    g.add_argument("--mediator-set", type=address_arg, metavar="ADDR", help="the MediatorSet (default: the "
                   "deployments file's mediator_set, else the market's arbiter)", **d)
    g.add_argument("--keystore", type=Path, metavar="FILE", help=f"the signing key (password from ${PASSWORD_ENV}, "
                   "--password-file, or a prompt)", **d)
    g.add_argument("--password-file", type=Path, metavar="FILE", help="the keystore's password", **d)
    g.add_argument("--key-file", type=Path, metavar="FILE", help="a raw hex private key in a file (devnets)", **d)
    g.add_argument("--json", action="store_true", help="one JSON object on stdout", **d)
    g.add_argument("--debug", action="store_true", help="show tracebacks", **d)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, allow_abbrev=False, description="Mediator tools: check a disputed "
                                     "job and sign a ruling; collect rulings and resolve the dispute on chain. "
                                     "Exit codes: 0 ok, 1 error, 2 usage, 3 `check` ruled the provider wrong.")
    _globals(parser, suppress=False)
    common = argparse.ArgumentParser(add_help=False)
    _globals(common, suppress=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("check", parents=[common], help="check a disputed job and sign a ruling",
                       description="Check a disputed job's result against its on-chain root, re-run the work, "
                                   "and write a signed ruling (JSON).")
    p.set_defaults(func=cmd_check)
    p.add_argument("job", metavar="JOB", help="job id (0x and 64 hex digits)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--result", type=Path, metavar="FILE", help="the provider's result file")
    which.add_argument("--no-result", action="store_true", help="the provider serves no result (or none "
                       "matching its root): rule against it")
    p.add_argument("--bundle", type=Path, metavar="FILE", help="the job's input (default: fetched from the "
                   "offer's inputURI; either way its SHA-256 must match the offer)")
    p.add_argument("--allow-private", action="store_true", help="let the input fetch reach private addresses "
                   "(devnets)")
    p.add_argument("--rtol", type=tolerance_arg, metavar="X", help="torch-export: relative tolerance (default: the "
                   "calibrated per-dtype value)")
    p.add_argument("--atol", type=tolerance_arg, metavar="X", help="torch-export: absolute tolerance (default: the "
                   "calibrated per-dtype value)")
    p.add_argument("--out", type=Path, metavar="FILE", help="where to write the ruling (default "
                   "ruling-<job>-<signer>.json)")

    p = sub.add_parser("submit", parents=[common], help="send a threshold of rulings to MediatorSet.resolve",
                       description="Collect rulings, order their signatures by signer and send MediatorSet.resolve "
                                   "(anyone may send it; the key only pays the gas).")
    p.set_defaults(func=cmd_submit)
    p.add_argument("job", metavar="JOB", help="job id (0x and 64 hex digits)")
    p.add_argument("rulings", nargs="+", type=Path, metavar="RULING", help="ruling files from `mediate check`")
    p.add_argument("--dry-run", action="store_true", help="check everything, send nothing (no key needed)")
    return parser


# -- plumbing -----------------------------------------------------------------------------------------------


def _emit(args: argparse.Namespace, human: str, obj: dict[str, Any]) -> None:
    print(json.dumps(obj) if args.json else human, flush=True)


def _job_id(text: str) -> bytes:
    from node.requester.state import normalise_job_id

    try:
        return bytes.fromhex(normalise_job_id(text)[2:])
    except ValueError as exc:
        raise CliError(str(exc)) from None


def _signer(args: argparse.Namespace, *, required: bool) -> Any:
    return signer_from_args(args, password_env=PASSWORD_ENV, role="mediator", required=required)


def _chain(args: argparse.Namespace) -> Any:
    """The deployment on the RPC endpoint (same rules as `gpunode request`: chain id and market checked)."""
    from node.config import load_settings
    from node.requester.client import Requester

    if args.config:
        if args.rpc or args.deployments or args.chain_id:
            raise CliError("--config names the chain; do not combine it with --rpc, --deployments or --chain-id")
        return Requester.from_settings(load_settings(args.config), None, max_fee_gwei=args.max_fee_gwei).chain
    return Requester.connect(args.rpc or DEFAULT_RPC, args.deployments, None, chain_id=args.chain_id,
                             max_fee_gwei=args.max_fee_gwei).chain


def _mediator_set(args: argparse.Namespace, chain: Any) -> Any:
    """--mediator-set, else the deployments file's, else the market's arbiter; it must have code."""
    from web3 import Web3

    from node.chain.contracts import load_abi

    address = args.mediator_set or chain.deployment.mediator_set \
        or chain.market.functions.arbiter().call()
    address = Web3.to_checksum_address(address)
    if not chain.w3.eth.get_code(address):
        raise CliError(f"no contract at {address}: the market's arbiter is not a MediatorSet on this chain",
                       "pass --mediator-set ADDR")
    return chain.w3.eth.contract(address=address, abi=load_abi("MediatorSet"))


def _members(mset: Any) -> tuple[list[str], int]:
    mediators, threshold = mset.functions.getMediators().call()
    return list(mediators), int(threshold)


# -- commands -----------------------------------------------------------------------------------------------


def cmd_check(args: argparse.Namespace) -> int:
    from node.mediator.check import MediatorError, judge, load_job
    from node.mediator.ruling import Ruling

    job_id = _job_id(args.job)
    signer = _signer(args, required=True)
    chain = _chain(args)
    mset = _mediator_set(args, chain)
    mediators, threshold = _members(mset)
    if signer.address not in mediators:
        raise MediatorError(f"{signer.address} is not a mediator of {mset.address} (its {len(mediators)} "
                            "mediators are listed by getMediators)", "sign with a mediator key, or pass the right "
                            "--mediator-set")
    job = load_job(chain, job_id)
    if job.state != "Disputed":
        raise MediatorError(f"job 0x{job_id.hex()} is {job.state}, not Disputed: there is nothing to rule on")
    verdict = judge(job, None if args.no_result else args.result, args.bundle, rtol=args.rtol, atol=args.atol,
                    allow_private=args.allow_private)
    ruling = Ruling.sign(signer, chain.deployment.chain_id, mset.address, job_id, verdict.provider_was_right,
                         reason=verdict.reason, evidence=verdict.evidence, signed_at=int(time.time()))
    out = args.out or Path(f"ruling-{job_id.hex()[:12]}-{signer.address[2:10].lower()}.json")
    out.write_text(json.dumps(ruling.to_json(), indent=2) + "\n", encoding="utf-8")
    side = "RIGHT" if verdict.provider_was_right else "WRONG"
    _emit(args, f"provider {side}: {verdict.reason}\nruling by {signer.address} written to {out} "
                f"({threshold} of {len(mediators)} mediators must sign; collect and `gpunode mediate submit`)",
          {"ok": True, "job_id": "0x" + job_id.hex(), "provider_was_right": verdict.provider_was_right,
           "reason": verdict.reason, "signer": signer.address, "ruling": str(out), "threshold": threshold})
    return 0 if verdict.provider_was_right else EXIT_PROVIDER_WRONG


def _load_rulings(paths: Sequence[Path]) -> list[Any]:
    from node.mediator.ruling import Ruling, RulingError

    rulings = []
    for path in paths:
        try:
            with open(path, encoding="utf-8") as fh:
                obj = json.loads(fh.read(_MAX_RULING_FILE))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RulingError(f"{path}: unreadable ruling file: {getattr(exc, 'strerror', None) or exc}") from None
        rulings.append(Ruling.from_json(obj, str(path)))
    return rulings


def cmd_submit(args: argparse.Namespace) -> int:
    from node.mediator.check import MediatorError
    from node.mediator.ruling import RulingError, collect, ruling_digest
    from node.requester.client import JOB_STATES

    job_id = _job_id(args.job)
    rulings = _load_rulings(args.rulings)
    signer = _signer(args, required=not args.dry_run)
    chain = _chain(args)
    mset = _mediator_set(args, chain)
    for r in rulings:
        if (r.chain_id, r.mediator_set, r.job_id) != (chain.deployment.chain_id, mset.address, job_id):
            raise RulingError(f"the ruling by {r.signer} is for job {r.job_hex} on chain {r.chain_id} (set "
                              f"{r.mediator_set}), not job 0x{job_id.hex()} on chain {chain.deployment.chain_id} "
                              f"(set {mset.address})")
    mediators, threshold = _members(mset)
    decision = collect(rulings, mediators=mediators, threshold=threshold)
    ours = ruling_digest(chain.deployment.chain_id, mset.address, job_id, decision.provider_was_right)
    if bytes(mset.functions.rulingDigest(job_id, decision.provider_was_right).call()) != ours:
        raise MediatorError("the contract's rulingDigest differs from this tool's: another MediatorSet version?")
    arbiter = chain.market.functions.arbiter().call()
    if arbiter != mset.address:
        raise MediatorError(f"the market's arbiter is {arbiter}, not {mset.address}: resolve would revert")
    state = JOB_STATES[chain.market.functions.getJob(job_id).call()[2]]
    if state != "Disputed":
        raise MediatorError(f"job 0x{job_id.hex()} is {state}, not Disputed")
    summary = {"job_id": "0x" + job_id.hex(), "provider_was_right": decision.provider_was_right,
               "signers": decision.signers, "ignored": decision.ignored, "threshold": threshold}
    verdict = "right" if decision.provider_was_right else "wrong"
    notes = "".join(f"\n  ignored {i}" for i in decision.ignored)
    if args.dry_run:
        _emit(args, f"would resolve: provider {verdict}, {len(decision.signers)} signature(s) of {threshold} "
                    f"needed{notes}", {"ok": True, "dry_run": True, **summary})
        return 0
    call = mset.functions.resolve(job_id, decision.provider_was_right, decision.signatures)
    step = chain.send(signer, call, "resolve")
    _emit(args, f"resolved: provider {verdict}, signed by {', '.join(decision.signers)}{notes}\n{step}",
          {"ok": True, **summary, "tx": step.tx_hash, "gas_used": step.gas_used, "fee_wei": str(step.fee_wei)})
    return 0


def _expected() -> tuple[type[BaseException], ...]:
    from node.mediator.check import MediatorError
    from node.mediator.ruling import RulingError
    from node.requester.commands import expected_errors

    return (*expected_errors(), MediatorError, RulingError)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one command; returns the exit code (0 ok, 1 error, 2 usage, 3 provider wrong)."""
    parser = build_parser()
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    if not getattr(args, "func", None):
        parser.print_help()
        return 2

    def failed(exc: BaseException) -> None:
        if args.json:
            print(json.dumps({"ok": False, "error": str(exc), "hint": getattr(exc, "hint", "")}), flush=True)

    return run_guarded(f"mediate {args.command}", lambda: args.func(args), debug=args.debug, expected=_expected(),
                       on_error=failed)
