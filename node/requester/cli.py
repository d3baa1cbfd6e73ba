"""``gpunode request`` (and ``scripts/requester.py``): the requester's command line.

Exit codes: 0 done, 1 error (one line on stderr, plus a hint where one helps; ``--debug`` shows the
traceback), 2 usage, 3 the result was verified and is wrong (``verify``, and ``run`` after challenging,
auditing or disputing it).
The commands themselves live in node.requester.commands; this module is the parser and the error handling.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path

from node.cli import address_arg, amount_arg, run_guarded, tolerance_arg
from node.requester import commands as c
from node.requester.client import JOB_STATES
from node.requester.proof_commands import add_commands as add_proof_commands
from node.requester.state import DEFAULT_STATE_DIR
from node.requester.verify import TOLERANCE

PROG = "gpunode request"
WORKLOADS = ("matmul-int8/v1", "torch-export/v1")
_DURATION = re.compile(r"([0-9]+)\s*([smhd]?)")
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(text: str) -> int:
    """argparse type: seconds, or a number with s, m, h or d (90, 90s, 30m, 2h, 1d)."""
    match = _DURATION.fullmatch(text.strip().lower())
    if not match or int(match.group(1)) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration >= 1 s (e.g. 600, 30m, 2h, 1d)")
    return int(match.group(1)) * _SECONDS[match.group(2)]


def _count(text: str) -> int:
    if not text.strip().isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 0")
    return int(text)


def _defaults(which: int) -> str:
    """The per-dtype default tolerances (node.requester.verify.TOLERANCE) for --help."""
    return ", ".join(f"{value[which]:g} for {dtype}" for dtype, value in TOLERANCE.items())


def _workload(text: str) -> str:
    name = text.strip()
    for known in WORKLOADS:
        if name in (known, known.split("/")[0]):
            return known
    raise argparse.ArgumentTypeError(f"unknown workload {text!r}; one of {', '.join(WORKLOADS)}")


def _states(text: str) -> str:
    names = [s.strip() for s in text.split(",")]
    lookup = {s.lower(): s for s in JOB_STATES}
    if not all(n.lower() in lookup for n in names):
        raise argparse.ArgumentTypeError(f"{text!r}: states are {', '.join(JOB_STATES[1:])}")
    return ",".join(lookup[n.lower()] for n in names)


def _globals(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """Options every command takes, before or after its name (after it, they override)."""
    d = {"default": argparse.SUPPRESS} if suppress else {}
    g = parser.add_argument_group("chain and key")
    g.add_argument("--rpc", metavar="URL", help=f"JSON-RPC endpoint (default {c.DEFAULT_RPC})", **d)
    g.add_argument("--deployments", type=Path, metavar="FILE", help="contract addresses (default "
                   "deployments/<chain id>.json)", **d)
    g.add_argument("--chain-id", type=int, metavar="N", help="refuse an RPC endpoint on another chain", **d)
    g.add_argument("--config", type=Path, metavar="FILE", help="take the chain from a gpunode config's [chain] "
                   "section instead (RPC endpoints, chain id, deployments, fee ceiling)", **d)
    g.add_argument("--max-fee-gwei", type=float, metavar="GWEI", help="never bid more per gas (default 200, or "
                   "the config's chain.max_fee_gwei)", **d)
    g.add_argument("--keystore", type=Path, metavar="FILE", help=f"the requester's key (password from "
                   f"${c.PASSWORD_ENV}, --password-file, or a prompt)", **d)
    g.add_argument("--password-file", type=Path, metavar="FILE", help="the keystore's password", **d)
    g.add_argument("--key-file", type=Path, metavar="FILE", help="a raw hex private key in a file (devnets)", **d)
    g.add_argument("--state-dir", type=Path, metavar="DIR", help=f"job records (default {DEFAULT_STATE_DIR})", **d)
    g.add_argument("--json", action="store_true", help="JSON on stdout for scripts", **d)
    g.add_argument("--debug", action="store_true", help="show tracebacks", **d)


def _terms(p: argparse.ArgumentParser) -> None:
    """The offer: what to compute and on what terms (offer and run)."""
    g = p.add_argument_group("the job")
    g.add_argument("--workload", type=_workload, default="matmul-int8/v1", metavar="NAME",
                   help=f"{' or '.join(WORKLOADS)} (default matmul-int8/v1)")
    g.add_argument("--params", metavar="JSON", help="the workload's params as JSON (or use the flags below)")
    for dim in ("m", "k", "n"):
        g.add_argument(f"--{dim}", type=_count, metavar="N", help=f"matmul: {dim} (A is m x k, B is k x n)")
    g.add_argument("--seed", type=_count, metavar="N", help="matmul: generate A and B from this seed")
    g.add_argument("--inputs", metavar="NAMES", help="torch-export: the bundle's input tensors, comma-separated")
    g.add_argument("--input", type=Path, metavar="FILE", help="the job's input file (matmul: safetensors with "
                   "A and B; torch-export: the bundle); the offer commits to its SHA-256")
    g.add_argument("--input-uri", metavar="URL", help="where providers download --input from")
    g = p.add_argument_group("the terms")
    g.add_argument("--payment", type=amount_arg, required=True, metavar="AMOUNT", help="tokens paid for the job")
    g.add_argument("--bond", type=amount_arg, default=Decimal(0), metavar="AMOUNT",
                   help="tokens the provider locks as a bond (default 0)")
    g.add_argument("--duration", type=_duration, default=3600, metavar="TIME",
                   help="from claim to submitted result (default 1h)")
    g.add_argument("--expires-in", type=_duration, default=3600, metavar="TIME",
                   help="how long the offer may be claimed (default 1h)")
    g.add_argument("--nonce", type=_count, metavar="N", help="default: the next free one")
    g.add_argument("--provider", type=address_arg, metavar="ADDR", help="only this provider may claim it")
    g.add_argument("--permit", action="store_true", help="pay by EIP-2612 permit instead of an approve")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, allow_abbrev=False, description="Requester tools: sign offers, "
                                     "pay, post or send them, follow the jobs, download and verify results, "
                                     "accept, challenge (matmul-int8 fraud proofs) or dispute. Exit codes: 0 ok, "
                                     "1 error, 2 usage, 3 result wrong.")
    _globals(parser, suppress=False)
    common = argparse.ArgumentParser(add_help=False)
    _globals(common, suppress=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, text: str, func: object, **defaults: object) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".", parents=[common],
                           allow_abbrev=False)
        p.set_defaults(func=func, **defaults)
        return p

    def job(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("job", metavar="JOB", help="job id (0x and 64 hex digits)")
        return p

    p = command("offer", "build and sign an offer (recorded in the state dir); print it, or post or send it",
                c.cmd_offer)
    _terms(p)
    p.add_argument("--out", type=Path, metavar="FILE", help="write the signed offer JSON here")
    p.add_argument("--post", action="store_true", help="pay and post it on chain")
    p.add_argument("--send", metavar="URL", help="pay and send it to this provider's API (POST /offers)")

    p = command("approve", "let the market take AMOUNT tokens (sends nothing if it already may)", c.cmd_approve)
    p.add_argument("amount", type=amount_arg, metavar="AMOUNT", help="whole tokens")
    p.add_argument("--permit", action="store_true", help="an EIP-2612 permit signature instead of approve")

    for name, text, func in (("post", "pay for and post a signed offer file on chain", c.cmd_post),
                             ("send", "pay for and send a signed offer file to a provider's API", c.cmd_send)):
        p = command(name, text, func, post=False, send=None)
        p.add_argument("file", type=Path, metavar="FILE", help="signed offer JSON (from `offer --out`)")
        if name == "send":
            p.add_argument("--to", required=True, metavar="URL", help="the provider's API")
        p.add_argument("--input", type=Path, metavar="FILE", help="the job's input file, recorded for verify")
        p.add_argument("--permit", action="store_true", help="pay by EIP-2612 permit instead of an approve")

    p = job(command("status", "show a job on chain and what the state dir recorded about it", c.cmd_status))
    p.add_argument("--show-secret", action="store_true", help="also print the job's audit secret (revealing it "
                   "before the result is committed lets the provider know where an audit will look)")
    p = job(command("follow", "wait for a job, showing its progress, until it has a result or ends", c.cmd_follow))
    p.add_argument("--until", type=_states, metavar="STATES", help="comma-separated states to wait for "
                   "(default Submitted, Disputed or a final state)")
    p.add_argument("--timeout", type=_duration, default=86400, metavar="TIME", help="give up after (default 1d)")

    p = job(command("fetch", "download the result with a signed request and check it against the chain",
                    c.cmd_fetch))
    p.add_argument("--out", type=Path, metavar="FILE", help="default <state dir>/results/<job id>.bin")
    p.add_argument("--endpoint", metavar="URL", help="the provider's API (default: where the offer was sent, "
                   "else its registered endpoint)")
    p.add_argument("--timeout", type=_duration, default=600, metavar="TIME", help="wait for it (default 10m)")

    p = job(command("verify", "check a downloaded result (exit 3 if it is wrong)", c.cmd_verify))
    p.add_argument("--result", type=Path, metavar="FILE", help="default: the file `fetch` saved")
    p.add_argument("--rtol", type=tolerance_arg, metavar="X", help=f"torch-export: relative tolerance (default "
                   f"{_defaults(0)})")
    p.add_argument("--atol", type=tolerance_arg, metavar="X", help=f"torch-export: absolute tolerance (default "
                   f"{_defaults(1)})")

    for name, text, action in (("accept", "pay the provider now (the result is right)", "accept"),
                               ("dispute", "dispute a submitted result within the challenge window", "dispute"),
                               ("cancel", "withdraw an unclaimed offer (payment back to your market credit)",
                                "cancel"),
                               ("expire", "refund a lapsed job (unclaimed past expiry, or provider late)", "expire")):
        job(command(name, text, c.cmd_settle, action=action))
    command("withdraw", "move your market credit (refunds) to your wallet", c.cmd_withdraw)
    add_proof_commands(command, job, _duration)

    p = command("serve", "serve input files over HTTP until Ctrl-C (devnets; prints their URLs)", c.cmd_serve)
    p.add_argument("files", nargs="+", type=Path, metavar="FILE", help="files (or one directory) to serve")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=_count, default=0, help="port (default: a free one)")

    p = command("run", "the whole job: sign, serve the input, pay, post or send, follow, fetch, verify, then "
                "accept, or challenge (matmul-int8) or dispute a wrong result", c.cmd_run)
    _terms(p)
    p.add_argument("--serve", action="store_true", help="serve --input from a local HTTP server while needed")
    p.add_argument("--serve-host", default="127.0.0.1", metavar="HOST", help="address for --serve")
    p.add_argument("--send", metavar="URL", help="send the offer to this provider's API instead of posting it")
    p.add_argument("--out", type=Path, metavar="FILE", help="where to save the result")
    p.add_argument("--endpoint", metavar="URL", help="download from this API (default: --send URL, else the "
                   "provider's registered endpoint)")
    p.add_argument("--timeout", type=_duration, metavar="TIME", help="give up waiting after (default: expiry + "
                   "duration + 5m)")
    p.add_argument("--no-settle", action="store_true", help="stop after verifying: neither accept nor dispute")
    p.add_argument("--rtol", type=tolerance_arg, metavar="X", help="torch-export: relative tolerance")
    p.add_argument("--atol", type=tolerance_arg, metavar="X", help="torch-export: absolute tolerance")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one command; returns the exit code (0 ok, 1 error, 2 usage, 3 result wrong)."""
    parser = build_parser()
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:  # argparse: 2 for usage errors, 0 for --help
        return exc.code if isinstance(exc.code, int) else 2
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    out = c.Output(args.json)

    def failed(exc: BaseException) -> None:  # scripts reading --json get the failure too
        out.emit({"ok": False, "error": str(exc), "hint": getattr(exc, "hint", "")})

    return run_guarded(f"request {args.command}", lambda: args.func(args, out), debug=args.debug,
                       expected=c.expected_errors(), on_error=failed)
