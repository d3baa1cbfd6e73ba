"""What a payout run says and how it ends: one JSON object per line on stdout, and an exit code that a timer
or a cron wrapper can act on without parsing anything.

JSON lines because the run is unattended: journald or a cron log keeps them, and a monitor can grep one event
type or sum amounts. Amounts are strings (base units do not fit a JSON double) next to their whole-token or
ETH form for humans. Nothing here ever receives a key or a password, so nothing can print one.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from decimal import Decimal
from enum import IntEnum
from typing import Any, TextIO

from node.chain.provider import tokens


class ExitCode(IntEnum):
    """The process exit status; the numbers are documented in docs/payout.md and must not change."""

    OK = 0  # done: something was sent, or there was nothing to do
    ERROR = 1  # configuration, RPC or a reverted transaction
    USAGE = 2  # bad command-line arguments (argparse)
    DEFERRED = 3  # the base fee is above payout.max_gas_gwei: nothing sent, try again later
    BUSY = 4  # another run holds the lock, or the sending key has transactions in flight
    NEEDS_FUNDS = 5  # the sending key could not pay the gas of a step, which was skipped


def eth(wei: int) -> str:
    """Wei as a plain decimal amount of ETH, e.g. 1500000000000000000 -> "1.5"."""
    return tokens(wei, 18)


def gwei(wei: int) -> str:
    return format(Decimal(wei).scaleb(-9).normalize(), "f") if wei else "0"


class Reporter:
    """Writes the event lines and remembers what the exit code has to say."""

    def __init__(self, out: TextIO | None = None, *, dry_run: bool = False) -> None:
        self.out = out or sys.stdout
        self.dry_run = dry_run
        self.needs_funds = False
        self.events: list[dict[str, Any]] = []

    def emit(self, event: str, **fields: Any) -> dict[str, Any]:
        line = {"ts": datetime.now(UTC).isoformat(timespec="milliseconds"), "event": event}
        if self.dry_run:
            line["dry_run"] = True
        line.update(fields)
        self.events.append(line)
        self.out.write(json.dumps(line, default=str) + "\n")
        self.out.flush()
        return line

    def skip(self, step: str, reason: str, *, needs_funds: bool = False, **fields: Any) -> None:
        """A step that had work to do, or was asked for, and did not send. `needs_funds` makes the run exit 5."""
        self.needs_funds = self.needs_funds or needs_funds
        self.emit("skip", step=step, reason=reason, needs_funds=needs_funds, **fields)
