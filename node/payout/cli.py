"""``gpunode payout`` (and scripts/payout.py): parse the arguments, take the lock, run one pass, print the
summary line, return an exit code that means something to a timer (see report.ExitCode, docs/payout.md).

Every outcome, failures included, is a JSON line on stdout, so a log collector sees one stream; argparse's
usage errors alone go to stderr (exit 2), as for every other command.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, TextIO

from node.chain.provider import tokens
from node.cli import address_arg
from node.datadir import DataDir, DataDirLocked
from node.payout.report import ExitCode, Reporter, eth
from node.payout.run import Totals

if TYPE_CHECKING:
    from node.config import Settings

_EPILOG = """exit codes:
  0  done: something was sent, or there was nothing to do
  1  error: configuration, RPC, or a transaction that would revert
  2  usage: bad arguments
  3  deferred: the base fee is above payout.max_gas_gwei (nothing sent; the next run tries again)
  4  busy: another payout run holds the lock, or the sending key has transactions in flight
  5  needs funds: the sending key could not pay the gas of a step, which was skipped (top it up)
A dry run sends nothing and exits with the code the real run would have."""


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 86400:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds in 0..86400")
    return value


def _batch(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 500:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer in 1..500")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpunode payout", epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="One unattended payout pass for cron or a systemd timer: finalize the provider's due jobs\n"
                    "(finalizeMany, in batches), withdraw the credited earnings to the payout address, and sweep\n"
                    "tokens and spare ETH to payout.sweep_to, keeping payout.gas_reserve_eth. Prints JSON lines;\n"
                    "safe to run often and concurrently (a lock, and it sends only what is still missing).")
    parser.add_argument("--config", metavar="FILE", help="config file (default: $GPUNODE_CONFIG, else defaults)")
    parser.add_argument("--dry-run", action="store_true", help="read everything, print the plan, send nothing")
    parser.add_argument("--wait", type=_seconds, default=0.0, metavar="SECONDS",
                        help="while the base fee is above the ceiling, poll this long before deferring (default 0)")
    parser.add_argument("--provider", type=address_arg, metavar="ADDR",
                        help="operator whose jobs to settle (default: the address in the node's keystore)")
    parser.add_argument("--batch", type=_batch, default=50, metavar="N", help="job ids per finalizeMany (default 50)")
    parser.add_argument("--debug", action="store_true", help="tracebacks for unexpected errors on stderr")
    return parser


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None) -> int:
    """Run one pass; the JSON lines go to `out` (stdout by default)."""
    parser = build_parser()
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:  # --help (0) or a usage error (2, message already on stderr)
        return int(exc.code or 0)
    if args.debug:
        logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
    report = Reporter(out, dry_run=args.dry_run)
    totals = Totals()
    try:
        code = _run(args, report, totals)
    except Exception as exc:  # every failure ends as one "error" line and exit 1
        if args.debug:
            traceback.print_exc()
        known = type(exc).__name__ in {"ConfigError", "OperatorError", "KeystoreError", "DeploymentError"}
        report.emit("error", error=_redact(str(exc) if known else f"{type(exc).__name__}: {exc}"))
        code = ExitCode.ERROR
    _summary(report, code, totals)
    return int(code)


def _run(args: argparse.Namespace, report: Reporter, totals: Totals) -> ExitCode:
    from node.config import load_settings
    from node.payout.lock import Locked, RunLock
    from node.payout.run import Options, run_payout

    settings = load_settings(args.config)
    totals.decimals = settings.pricing.token_decimals
    options = Options(dry_run=args.dry_run, wait_s=args.wait, batch=args.batch,
                      poll_s=max(settings.chain.poll_interval_s, 0.5))
    lock = RunLock(settings.node.data_dir)
    try:
        with nullcontext() if args.dry_run else lock:  # a dry run writes nothing, so it needs no lock
            with nullcontext() if args.dry_run or settings.payout.keystore else _node_stopped(settings):
                return run_payout(settings, report, options, totals, provider=args.provider)
    except Locked:
        report.emit("locked", lock=str(lock.path), note="another payout run is in progress; this one sent nothing")
        return ExitCode.BUSY
    except DataDirLocked:
        report.emit("locked", lock=str(settings.node.data_dir / "node.lock"),
                    note="the node is running and signs with the operator key, which this run would share (and "
                         "race for nonces); the node finalizes and withdraws by itself, or set payout.keystore to "
                         "a hot payout key; this run sent nothing")
        return ExitCode.BUSY


@contextmanager
def _node_stopped(settings: Settings) -> Iterator[None]:
    """Without a hot payout key the operator key sends: hold the node's own data-dir lock for the run, so the
    pass and a running node never hand out the same key's nonces (raises DataDirLocked while it runs)."""
    node = DataDir(settings.node.data_dir)
    node.lock()
    try:
        yield
    finally:
        node.unlock()


def _redact(text: str) -> str:
    """RPC URLs in an error (an HTTP error names the URL) cut to scheme://host: API keys live in their paths."""
    from node.chain.rpc import redact

    # a URL ends before the punctuation of the sentence around it ("http://host:9: refused")
    return re.sub(r"\b(?:https?|wss?)://[^\s'\"]*[^\s'\":,.;)]", lambda m: redact(m.group(0)), text)


def _summary(report: Reporter, code: ExitCode, totals: Totals) -> None:
    t = totals
    report.emit("summary", exit_code=int(code), outcome=code.name.lower(), **t.extra, sent=t.sent,
                finalized=t.finalized, due=t.due, watching=t.watching, credited=str(t.credited),
                withdrawn=str(t.withdrawn), withdrawn_tokens=tokens(t.withdrawn, t.decimals),
                swept_tokens=str(t.swept_tokens), swept_eth_wei=str(t.swept_eth), swept_eth=eth(t.swept_eth),
                fees_wei=str(t.fees_wei), fees_eth=eth(t.fees_wei))
