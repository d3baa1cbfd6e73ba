"""The ``gpunode request`` commands: each takes the parsed arguments, calls the library (``Requester``,
``run_job``, ``InputServer``) and prints. Human output is lines for people (progress on stderr, results on
stdout); ``--json`` prints one JSON object per command on stdout (``run``: one JSON line per event), with
token amounts as decimal strings of base units, since they exceed what JSON numbers hold exactly.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

from node.chain.keys import Signer
from node.chain.offers import ZERO_ADDRESS
from node.chain.provider import Step, tokens
from node.chain.verify import SignedOffer
from node.cli import CliError, signer_from_args, token_units
from node.config import load_settings
from node.requester.client import TERMINAL, Requester
from node.requester.errors import RequesterError
from node.requester.pipeline import JobSpec, run_job
from node.requester.serve import InputServer
from node.requester.state import normalise_job_id
from node.requester.terms import TORCH_EXPORT, file_sha256, matmul_params, torch_export_params

PASSWORD_ENV = "GPUNODE_REQUESTER_PASSWORD"
DEFAULT_RPC = "http://127.0.0.1:8545"
EXIT_WRONG = 3  # the result was verified and is wrong


class Output:
    """Where a command's words go: ``say`` results (stdout), ``note`` progress (stderr), ``emit`` JSON."""

    def __init__(self, json_mode: bool) -> None:
        self.json = json_mode

    def say(self, text: str) -> None:
        if not self.json:
            print(text, flush=True)

    def note(self, text: str) -> None:
        if not self.json:
            print(text, file=sys.stderr, flush=True)

    def emit(self, obj: dict[str, Any]) -> None:
        if self.json:
            print(json.dumps(obj), flush=True)


# -- key and chain ----------------------------------------------------------------------------------------


def signer_from(args: argparse.Namespace, *, required: bool = True) -> Signer | None:
    """The requester's key (see node.cli.signer_from_args)."""
    return signer_from_args(args, password_env=PASSWORD_ENV, role="requester", required=required)


def requester_from(args: argparse.Namespace, *, key: bool = True) -> Requester:
    signer = signer_from(args, required=key)
    state_dir = args.state_dir
    if args.config:
        if args.rpc or args.deployments or args.chain_id:
            raise CliError("--config names the chain; do not combine it with --rpc, --deployments or --chain-id")
        return Requester.from_settings(load_settings(args.config), signer, max_fee_gwei=args.max_fee_gwei,
                                       state_dir=state_dir)
    return Requester.connect(args.rpc or DEFAULT_RPC, args.deployments, signer, chain_id=args.chain_id,
                             max_fee_gwei=args.max_fee_gwei, state_dir=state_dir)


def units(req: Requester, amount: Decimal, flag: str) -> int:
    return token_units(amount, req.decimals(), flag)


def job_json(job: dict[str, Any]) -> dict[str, Any]:
    return {**job, "payment": str(job["payment"]), "providerBond": str(job["providerBond"])}


def step_json(step: Step | None) -> dict[str, Any] | None:
    return None if step is None else {"name": step.name, "tx": step.tx_hash, "gas_used": step.gas_used,
                                      "fee_wei": str(step.fee_wei)}


# -- building offers --------------------------------------------------------------------------------------


def params_from(args: argparse.Namespace) -> bytes:
    """--params as given, or the convenience flags turned into the workload's params JSON."""
    shortcuts = [k for k in ("m", "k", "n", "seed", "inputs") if getattr(args, k) is not None]
    if args.params is not None:
        if shortcuts:
            raise CliError(f"--params gives all params; drop --{', --'.join(shortcuts)}")
        return args.params.encode("utf-8")
    if args.workload == TORCH_EXPORT:
        return torch_export_params(args.inputs.split(",") if args.inputs else None, args.input)
    if args.inputs:
        raise CliError(f"--inputs is for {TORCH_EXPORT}")
    return matmul_params(m=args.m, k=args.k, n=args.n, seed=args.seed, input_path=args.input)


def spec_from(args: argparse.Namespace, req: Requester) -> JobSpec:
    return JobSpec(workload=args.workload, params=params_from(args), payment=units(req, args.payment, "--payment"),
                   bond=units(req, args.bond, "--bond"), max_duration=args.duration, expires_in=args.expires_in,
                   nonce=args.nonce, provider=args.provider or ZERO_ADDRESS, input_path=args.input,
                   input_uri=args.input_uri or "")


# -- commands ---------------------------------------------------------------------------------------------


def cmd_offer(args: argparse.Namespace, out: Output) -> int:
    if args.post and args.send:
        raise CliError("--post or --send, not both")
    req = requester_from(args)
    spec = spec_from(args, req)
    signed = req.build_offer(spec.workload, spec.params, payment=spec.payment, bond=spec.bond,
                             max_duration=spec.max_duration, expires_in=spec.expires_in, nonce=spec.nonce,
                             provider=spec.provider, input_path=spec.input_path, input_uri=spec.input_uri)
    job_id = "0x" + signed.job_id.hex()
    result: dict[str, Any] = {"job_id": job_id, "nonce": signed.offer.nonce, "offer": signed.to_json()}
    if args.out:
        args.out.write_text(json.dumps(signed.to_json(), indent=2) + "\n", encoding="utf-8")
        out.note(f"wrote the signed offer to {args.out}")
    out.note(f"signed offer {job_id} (nonce {signed.offer.nonce}); recorded in {req.store.jobs}")
    if args.post or args.send:
        result |= _deliver(req, signed, args, out)
    elif not args.out:
        out.say(json.dumps(signed.to_json(), indent=2))
    out.say(job_id)
    out.emit(result)
    return 0


def _deliver(req: Requester, signed: SignedOffer, args: argparse.Namespace, out: Output) -> dict[str, Any]:
    """Pays (approve or permit, only what is missing) and posts or sends the offer."""
    step = req.ensure_allowance(signed.offer.payment, permit=args.permit)
    if step is not None:
        out.note(f"{step.name}: the market may take the payment — {step}")
    if args.send:
        reply = req.send(signed, args.send)
        if not reply.get("accepted"):
            raise CliError(f"{args.send} refused the offer: {reply.get('code')}: {reply.get('reason')}")
        out.note(f"sent to {args.send}: accepted ({reply.get('state')})")
        return {"allowance": step_json(step), "sent": reply}
    job_id, posted = req.post(signed)
    out.note(f"posted {job_id} — {posted}")
    return {"allowance": step_json(step), "posted": step_json(posted)}


def _load_offer(path: Path) -> SignedOffer:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CliError(f"cannot read the offer file {path}: {exc.strerror}") from None
    return SignedOffer.from_json(text)


def cmd_post(args: argparse.Namespace, out: Output) -> int:
    args.post = True
    return _deliver_file(args, out)


def cmd_send(args: argparse.Namespace, out: Output) -> int:
    args.send = args.to
    return _deliver_file(args, out)


def _deliver_file(args: argparse.Namespace, out: Output) -> int:
    """post and send: a signed offer file, recorded, paid for and delivered as args.post / args.send say."""
    req = requester_from(args)
    signed = _load_offer(args.file)
    req.remember(signed, input_path=args.input)
    result = {"job_id": "0x" + signed.job_id.hex(), **_deliver(req, signed, args, out)}
    out.say(result["job_id"])
    out.emit(result)
    return 0


def cmd_approve(args: argparse.Namespace, out: Output) -> int:
    req = requester_from(args)
    amount = units(req, args.amount, "AMOUNT")
    step = req.ensure_allowance(amount, permit=args.permit)
    shown = tokens(amount, req.decimals())
    out.say(f"the market may already take {shown} tokens: nothing sent" if step is None else
            f"{step.name}: the market may take {shown} tokens — {step}")
    out.emit({"amount": str(amount), "step": step_json(step)})
    return 0


def cmd_status(args: argparse.Namespace, out: Output) -> int:
    req = requester_from(args, key=False)
    job = req.job(args.job)
    record = req.store.find(job["job_id"])
    local = None if record is None else {"workload": record.workload, "input_path": record.input_path,
                                         "provider_url": record.provider_url, "notes": record.notes}
    decimals = req.decimals()
    out.say(f"job {job['job_id']}: {job['state']}")
    if job["state"] != "None":
        out.say(f"  requester {job['requester']}, provider {job['provider']}\n  payment "
                f"{tokens(job['payment'], decimals)}, bond {tokens(job['providerBond'], decimals)} tokens; due "
                f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(job['due']))} UTC\n  result root {job['resultRoot']}")
    if record is not None and local is not None and args.show_secret:
        local["audit_secret"] = record.audit_secret
    if local:
        out.say(f"  workload {local['workload']}; recorded notes: {json.dumps(local['notes'])}")
        if "audit_secret" in local:
            out.say(f"  audit secret {local['audit_secret']}")
    out.emit({"job": job_json(job), "local": local})
    return 0


def _progress(out: Output) -> Callable[[dict[str, Any]], None]:
    def show(job: dict[str, Any]) -> None:
        out.note(f"{time.strftime('%H:%M:%S')} job {job['job_id'][:10]}…: {job['state']}")
    return show


def cmd_follow(args: argparse.Namespace, out: Output) -> int:
    req = requester_from(args, key=False)
    until = set(args.until.split(",")) if args.until else {"Submitted", "Disputed", *TERMINAL}
    job = req.wait(normalise_job_id(args.job), until, timeout=args.timeout, progress=_progress(out))
    out.say(f"job {job['job_id']}: {job['state']}")
    out.emit({"job": job_json(job)})
    return 0


def cmd_fetch(args: argparse.Namespace, out: Output) -> int:
    req = requester_from(args)
    job_id = normalise_job_id(args.job)
    record = req.store.find(job_id)
    suffix = ".safetensors" if record and record.workload.startswith("torch-export") else ".bin"
    target = args.out or req.store.root / "results" / f"{job_id}{suffix}"
    path = req.fetch(job_id, target, timeout=args.timeout, endpoint=args.endpoint)
    out.say(f"{path} ({path.stat().st_size:,} bytes): the Merkle root matches the one on chain")
    out.emit({"job_id": job_id, "path": str(path), "bytes": path.stat().st_size})
    return 0


def cmd_verify(args: argparse.Namespace, out: Output) -> int:
    req = requester_from(args, key=False)
    job_id = normalise_job_id(args.job)
    result = args.result
    if result is None:
        record = req.store.load(job_id)
        if "result" not in record.notes:
            raise CliError(f"no downloaded result for {job_id}", f"fetch it first (`fetch {job_id}`) or pass "
                           "--result FILE")
        result = Path(record.notes["result"])
    report = req.verify(job_id, result, rtol=args.rtol, atol=args.atol)
    out.say(f"{'RIGHT' if report.ok else 'WRONG'}: {report.detail}")
    out.emit({"job_id": job_id, "result": str(result), "report": report.to_json()})
    return 0 if report.ok else EXIT_WRONG


def cmd_settle(args: argparse.Namespace, out: Output) -> int:
    req = requester_from(args)
    job_id = normalise_job_id(args.job)
    step = getattr(req, args.action)(job_id)
    state = req.job(job_id)["state"]
    out.say(f"{step.name}: job {job_id} is {state} — {step}")
    out.emit({"job_id": job_id, "state": state, "step": step_json(step)})
    return 0


def cmd_withdraw(args: argparse.Namespace, out: Output) -> int:
    req = requester_from(args)
    amount, step = req.withdraw()
    out.say("no market credit to withdraw" if step is None else
            f"withdrew {tokens(amount, req.decimals())} tokens to {req.address} — {step}")
    out.emit({"amount": str(amount), "step": step_json(step)})
    return 0


def cmd_serve(args: argparse.Namespace, out: Output) -> int:
    with InputServer(args.files, host=args.host, port=args.port) as server:
        files = {name: {"url": server.url_for(name), "sha256": "0x" + file_sha256(path).hex()}
                 for name, path in server.files.items()}
        for info in files.values():
            out.say(f"{info['url']}  sha256 {info['sha256']}")
        out.emit({"files": files})
        out.note("serving until Ctrl-C")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            out.note("stopped")
    return 0


def cmd_run(args: argparse.Namespace, out: Output) -> int:
    req = requester_from(args)
    spec = spec_from(args, req)

    def emit(event: str, message: str, fields: dict[str, Any]) -> None:
        out.note(message)
        out.emit({"event": event, "at": round(time.time(), 3), **fields})

    outcome = run_job(req, spec, serve=args.serve, serve_host=args.serve_host, send_to=args.send,
                      permit=args.permit, out=args.out, endpoint=args.endpoint, timeout=args.timeout,
                      settle=not args.no_settle, rtol=args.rtol, atol=args.atol, emit=emit)
    report = outcome.report
    out.emit({"event": "done", "job_id": outcome.job_id, "state": outcome.state, "ok": not outcome.wrong,
              "result": str(outcome.result) if outcome.result else None,
              "report": report.to_json() if report else None})
    out.say(f"{outcome.job_id}: {outcome.state}")
    return EXIT_WRONG if outcome.wrong else 0


def expected_errors() -> tuple[type[BaseException], ...]:
    """Errors whose message is written for the user: shown as one line (plus hint), no traceback."""
    from node.chain.deployments import DeploymentError
    from node.chain.keys import KeystoreError
    from node.chain.offers import OfferError
    from node.chain.provider import OperatorError
    from node.config import ConfigError
    from node.requester.state import StateError

    return (CliError, RequesterError, OperatorError, KeystoreError, ConfigError, DeploymentError, StateError,
            OfferError, FileNotFoundError)
