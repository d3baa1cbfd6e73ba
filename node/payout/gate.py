"""The checks every payout transaction passes first: nothing of ours in flight, gas under the ceiling, and
ETH to pay for it. In a dry run the same checks only record what the real run would do.

- In flight: the sending key's "pending" nonce above its "latest" one means a transaction is still out there,
  perhaps sent by a run that died waiting for it. Sending now could duplicate its effect (or queue behind it
  at a fee below the market), so the run sends nothing and exits busy; the next run decides after it lands.
- Ceiling: the next block's base fee (the last ``baseFeePerGas`` of ``eth_feeHistory``) above the fee ceiling
  (payout.max_gas_gwei, capped by chain.max_fee_gwei) means no bid under the ceiling can be included, so the
  run waits up to ``--wait`` seconds and then defers instead of overpaying or leaving a stuck transaction.
- Funds: a step whose maximum gas cost (gas estimate x the margin ``OperatorChain.send`` adds x its fee cap) is
  more than the key holds is skipped and the run exits "needs funds", rather than failing halfway through.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from web3.exceptions import ContractCustomError, ContractLogicError

from node.chain.contracts import decode_revert
from node.chain.fees import Fees
from node.chain.provider import GAS_MARGIN, OperatorChain, OperatorError
from node.payout.report import ExitCode, Reporter, eth, gwei


class Stop(Exception):
    """Ends the pass early with an exit code (deferred, busy); whatever was sent before stays sent."""

    def __init__(self, code: ExitCode) -> None:
        super().__init__(code.name)
        self.code = code


class Gate:
    def __init__(self, chain: OperatorChain, sender: str, report: Reporter, *, dry_run: bool, poll_s: float = 2.0,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        self.chain, self.w3, self.sender, self.report = chain, chain.w3, sender, report
        self.dry, self.poll_s, self.clock, self.sleep = dry_run, poll_s, clock, sleep
        self.dry_code = ExitCode.OK  # a dry run's verdict: the code the real run would stop with
        self.planned_cost = 0  # dry run: ETH the planned steps may spend, taken off the balance it sees

    def check_pending(self) -> None:
        in_flight = (self.w3.eth.get_transaction_count(self.sender, "pending")
                     - self.w3.eth.get_transaction_count(self.sender, "latest"))
        if in_flight > 0:
            self.report.emit("pending", sender=self.sender, in_flight=in_flight,
                             note="transactions from the sending key are still in flight; sending nothing until "
                                  "they land (they may be a previous run's)")
            self.stop(ExitCode.BUSY)

    def check_gas(self, wait_s: float) -> None:
        ceiling = self.chain.fees.ceiling
        started = self.clock()
        base = self.next_base_fee()
        while base > ceiling and not self.dry and (left := wait_s - (self.clock() - started)) > 0:
            self.sleep(min(self.poll_s, left))
            base = self.next_base_fee()
        if base > ceiling:
            self.report.emit("deferred", base_fee_gwei=gwei(base), ceiling_gwei=gwei(ceiling),
                             waited_s=round(self.clock() - started, 1),
                             note="the next block's base fee is above the gas ceiling (payout.max_gas_gwei, "
                                  "chain.max_fee_gwei); nothing sent")
            self.stop(ExitCode.DEFERRED)

    def guard(self) -> None:
        """Right before each transaction of a real run: nothing of ours in flight, gas still under the ceiling."""
        if not self.dry:
            self.check_pending()
            self.check_gas(0)

    def balance(self) -> int:
        return self.w3.eth.get_balance(self.sender) - self.planned_cost

    def affords(self, step: str, cost: int, **fields: Any) -> bool:
        balance = self.balance()
        if balance >= cost:
            return True
        self.report.skip(step, "the sending key cannot pay this step's gas", needs_funds=True, sender=self.sender,
                         balance_eth=eth(max(balance, 0)), max_gas_cost_eth=eth(cost), **fields)
        return False

    def estimate(self, call: Any, name: str) -> tuple[int, int]:
        """The gas limit ``OperatorChain.send`` will use for `call` and its maximum cost at the current bid."""
        try:
            gas = call.estimate_gas({"from": self.sender})
        except ContractCustomError as exc:
            raise OperatorError(f"{name} would revert: {decode_revert(exc.data)}") from None
        except ContractLogicError as exc:
            raise OperatorError(f"{name} would revert: {exc.message or exc}") from None
        limit = int(gas * GAS_MARGIN)
        return limit, limit * self.fees().max_fee

    def plan(self, event: str, cost: int, **fields: Any) -> None:
        """Dry run: report a step the real run would send, and count its gas against the balance."""
        self.planned_cost += cost
        self.report.emit(event, max_gas_cost_eth=eth(cost), **fields)

    def stop(self, code: ExitCode) -> None:
        if not self.dry:
            raise Stop(code)
        if self.dry_code == ExitCode.OK:  # the first reason is the one the real run would stop at
            self.dry_code = code

    def fees(self) -> Fees:
        """The bid ``OperatorChain.send`` makes right now (same history, same policy)."""
        return self.chain.fees.market(self.w3.eth.fee_history(5, "latest", [50]))

    def next_base_fee(self) -> int:
        return int(self.w3.eth.fee_history(1, "latest", [50])["baseFeePerGas"][-1])
