"""One payout pass: finalize the due jobs, withdraw, sweep. Each step reads the chain right before it sends.

Why it is safe to run every minute, twice at once, or again after a crash:
- ``cli`` holds the run lock, so two passes never plan from the same reading.
- ``Gate`` (gate.py) stops the pass when the sending key has a transaction in flight or gas is above the
  ceiling, before the first transaction and again before every other one.
- Each step re-reads what it acts on (job states, the credited balance, token and ETH balances) right before
  it builds its transaction, so a rerun finds done work done and sends only what is still missing.
- Fees are bid and transactions sent by ``OperatorChain.send`` only, the same sender as `gpunode withdraw`.

The ETH gas reserve is what the key pays gas from: finalizing, withdrawing and sweeping tokens may spend it
(that is what it is for); only the ETH sweep is bounded by it. A step the key cannot pay for is skipped and the
run exits "needs funds"; a key merely below the reserve is reported in the summary (below_reserve).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from web3 import Web3
from web3.logs import DISCARD

from node.chain.provider import GAS_MARGIN, OperatorChain, OperatorError, Step, payout_of, tokens, withdraw_earnings
from node.config import Settings, to_base_units
from node.payout.gate import Gate, Stop
from node.payout.keys import PayoutKeys
from node.payout.report import ExitCode, Reporter, eth
from node.payout.scan import STATE_NAME, ScanState, confirm_due, scan_submissions, still_due


@dataclass(frozen=True)
class Options:
    dry_run: bool = False
    wait_s: float = 0.0  # how long to wait for the base fee to come under the ceiling
    batch: int = 50  # job ids per finalizeMany
    poll_s: float = 2.0  # base fee polling interval while waiting


@dataclass
class Totals:
    """What the pass did (or, in a dry run, would do); reported in the summary line."""

    sent: int = 0
    finalized: int = 0
    credited: int = 0  # token units credited by our finalizations
    withdrawn: int = 0
    swept_tokens: int = 0
    swept_eth: int = 0
    fees_wei: int = 0
    due: int = 0
    watching: int = 0  # submitted jobs whose window is still open (or that are disputed)
    decimals: int = 18  # the token's, for the whole-token amounts
    extra: dict[str, Any] = field(default_factory=dict)


class EthTransfer:
    """A plain ETH transfer shaped like a contract call for ``OperatorChain.send`` (which calls only
    ``build_transaction``). The amount is fixed at build time from the balance read then and the fee cap the
    sender just chose: everything above the reserve and this transaction's own maximum gas cost."""

    def __init__(self, w3: Web3, to: str, reserve: int) -> None:
        self.w3, self.to, self.reserve = w3, to, reserve
        self.value = 0

    def build_transaction(self, tx: dict[str, Any]) -> dict[str, Any]:
        sender = tx["from"]
        gas = self.w3.eth.estimate_gas({"from": sender, "to": self.to, "value": 1})
        limit = int(gas * GAS_MARGIN)  # the gas limit send() will set
        value = self.w3.eth.get_balance(sender) - self.reserve - limit * tx["maxFeePerGas"]
        if value <= 0:
            raise OperatorError("sweep_eth: nothing above the gas reserve any more")
        self.value = value
        return {**tx, "to": self.to, "value": value, "data": b"", "gas": gas}


class PayoutRun:
    def __init__(self, chain: OperatorChain, settings: Settings, keys: PayoutKeys, report: Reporter,
                 options: Options, totals: Totals) -> None:
        self.chain, self.w3, self.settings, self.keys = chain, chain.w3, settings, keys
        self.report, self.options, self.totals = report, options, totals
        self.dry = options.dry_run
        self.gate = Gate(chain, keys.sender, report, dry_run=options.dry_run, poll_s=options.poll_s)
        self.decimals = settings.pricing.token_decimals
        p = settings.payout
        self.reserve = to_base_units(p.gas_reserve_eth, 18)
        self.withdraw_threshold = to_base_units(p.withdraw_threshold, self.decimals)
        self.sweep_threshold = to_base_units(p.sweep_threshold, self.decimals)
        self.sweep_to = Web3.to_checksum_address(p.sweep_to) if p.sweep_to else None
        self.state_path = settings.node.data_dir / STATE_NAME
        self.payout = ""
        self.planned_credit = 0  # dry run: tokens the planned finalizations would credit
        self.planned_tokens = 0  # dry run: tokens the planned withdrawal would bring to the payout address

    def execute(self) -> ExitCode:
        on_chain = self.chain.token.functions.decimals().call()
        if on_chain != self.decimals:
            raise OperatorError(f"pricing.token_decimals is {self.decimals} but the token has {on_chain}; fix the "
                                "config so the thresholds mean what you think")
        self.payout = payout_of(self.chain, self.keys.provider, self.settings.payout.address)
        if self.sweep_to and self.sweep_to.lower() in (self.keys.sender.lower(), self.payout.lower()):
            raise OperatorError(f"payout.sweep_to {self.sweep_to} is the payout address or the sending key itself; "
                                "set it to a cold address")
        try:
            self.gate.check_pending()
            self.gate.check_gas(self.options.wait_s)
            self.finalize()
            self.withdraw()
            self.sweep()
        except Stop as stop:
            self._note_balance()
            return stop.code
        self._note_balance()
        if self.gate.dry_code != ExitCode.OK:
            return self.gate.dry_code
        return ExitCode.NEEDS_FUNDS if self.report.needs_funds else ExitCode.OK

    def finalize(self) -> None:
        head = self.w3.eth.get_block("latest")
        start = self.settings.chain.start_block
        state = ScanState.load(self.state_path, chain_id=self.chain.deployment.chain_id,
                               market=self.chain.market.address, provider=self.keys.provider,
                               start_block=self.chain.deployment.deploy_block if start is None else start)
        scan_submissions(self.chain, state, head["number"], margin=self.settings.chain.reorg_depth)
        due = confirm_due(self.chain, state, head["timestamp"])
        self.totals.due, self.totals.watching = len(due), len(state.candidates) - len(due)
        if not self.dry:
            state.save(self.state_path)
        net = {d.job_id: d.net for d in due}
        for at in range(0, len(due), self.options.batch):
            ids = [d.job_id for d in due[at:at + self.options.batch]]
            if not self.dry:
                self.gate.guard()
                ids = still_due(self.chain, ids, self.w3.eth.get_block("latest")["timestamp"])
                if not ids:
                    continue
            call = self.chain.market.functions.finalizeMany([bytes.fromhex(j[2:]) for j in ids])
            limit, cost = self.gate.estimate(call, "finalizeMany")
            if not self.gate.affords("finalize", cost, jobs=len(ids)):
                return  # the later batches cost as much: all skipped for the same reason
            if self.dry:
                self.planned_credit += (amount := sum(net[j] for j in ids))
                self.totals.finalized += len(ids)
                self.gate.plan("finalize", cost, jobs=ids, count=len(ids), **self._tokens(amount), gas=limit)
                continue
            step = self.chain.send(self.keys.signer, call, "finalizeMany")
            receipt = self.w3.eth.get_transaction_receipt(step.tx_hash)
            events = self.chain.market.events.JobFinalized().process_receipt(receipt, errors=DISCARD)
            done = ["0x" + bytes(e["args"]["jobId"]).hex() for e in events]
            amount = sum(e["args"]["amount"] for e in events if e["args"]["payout"].lower() == self.payout.lower())
            self._sent(step, finalized=len(done), credited=amount)
            self.report.emit("finalize", jobs=done, count=len(done), **self._tokens(amount), **self._tx(step))
            for job_id in done:
                state.candidates.pop(job_id, None)
            state.save(self.state_path)

    def withdraw(self) -> None:
        credited = self.chain.market.functions.balanceOf(self.payout).call()
        expected = credited + self.planned_credit
        if expected == 0:
            return
        if expected <= self.withdraw_threshold:
            self.report.skip("withdraw", "credited balance at or below payout.withdraw_threshold",
                             payout=self.payout, **self._tokens(expected))
            return
        call = self.chain.market.functions.withdrawFor(self.payout)
        if self.dry:  # before the planned finalizations nothing may be credited yet: no estimate then
            limit, cost = self.gate.estimate(call, "withdrawFor") if credited else (None, 0)
            if self.gate.affords("withdraw", cost):
                self.planned_tokens = expected
                self.totals.withdrawn += expected
                self.gate.plan("withdraw", cost, payout=self.payout, **self._tokens(expected), gas=limit)
            return
        self.gate.guard()
        _, cost = self.gate.estimate(call, "withdrawFor")
        if not self.gate.affords("withdraw", cost):
            return
        amount, step = withdraw_earnings(self.chain, self.keys.signer, self.payout)  # re-reads the balance
        if step is not None:
            self._sent(step)
            self.totals.withdrawn += amount
            self.report.emit("withdraw", payout=self.payout, **self._tokens(amount), **self._tx(step))

    def sweep(self) -> None:
        if self.sweep_to is None:
            return
        if not self.keys.hot:
            self.report.skip("sweep", "no payout.keystore: the operator key never holds the earnings, so there "
                             "is nothing it could sweep; set payout.keystore to a hot key registered as the payout "
                             "address")
            return
        if self.keys.sender.lower() != self.payout.lower():
            self.report.skip("sweep", f"the payout key {self.keys.sender} is not the payout address "
                             f"{self.payout}, so it cannot move the earnings; register it as the payout address")
            return
        self.sweep_tokens()
        self.sweep_eth()

    def sweep_tokens(self) -> None:
        held = self.chain.token.functions.balanceOf(self.payout).call()
        expected = held + self.planned_tokens
        if expected == 0:
            return
        if expected <= self.sweep_threshold:
            self.report.skip("sweep_token", "token balance at or below payout.sweep_threshold",
                             **self._tokens(expected))
            return
        if self.dry:  # before the planned withdrawal the tokens may not be here yet: no estimate then
            call = self.chain.token.functions.transfer(self.sweep_to, held)
            limit, cost = self.gate.estimate(call, "sweep_token") if held else (None, 0)
            if self.gate.affords("sweep_token", cost):
                self.totals.swept_tokens += expected
                self.gate.plan("sweep_token", cost, to=self.sweep_to, **self._tokens(expected), gas=limit)
            return
        self.gate.guard()
        held = self.chain.token.functions.balanceOf(self.payout).call()
        call = self.chain.token.functions.transfer(self.sweep_to, held)
        _, cost = self.gate.estimate(call, "sweep_token")
        if not self.gate.affords("sweep_token", cost):
            return
        step = self.chain.send(self.keys.signer, call, "sweep_token")
        self._sent(step)
        self.totals.swept_tokens += held
        self.report.emit("sweep_token", to=self.sweep_to, **self._tokens(held), **self._tx(step))

    def sweep_eth(self) -> None:
        """Everything above the reserve and the sweep's own maximum gas cost; when that is nothing (as right
        after a sweep, which leaves the unused part of the fee cap) no line is written: there is nothing to do."""
        balance = self.gate.balance()
        if balance <= self.reserve:
            return
        gas = self.w3.eth.estimate_gas({"from": self.keys.sender, "to": self.sweep_to, "value": 1})
        limit = int(gas * GAS_MARGIN)
        cost = limit * self.gate.fees().max_fee
        amount = balance - self.reserve - cost
        if amount <= 0:
            return
        if self.dry:
            self.totals.swept_eth += amount
            self.gate.plan("sweep_eth", cost, to=self.sweep_to, amount_wei=str(amount), amount_eth=eth(amount),
                           gas=limit)
            return
        self.gate.guard()
        transfer = EthTransfer(self.w3, self.sweep_to, self.reserve)  # recomputes the amount at send time
        step = self.chain.send(self.keys.signer, transfer, "sweep_eth")
        self._sent(step)
        self.totals.swept_eth += transfer.value
        self.report.emit("sweep_eth", to=self.sweep_to, amount_wei=str(transfer.value),
                         amount_eth=eth(transfer.value), **self._tx(step))

    def _note_balance(self) -> None:
        """The sending key's ETH for the summary. Being below the reserve is normal (gas is paid from it) and
        not an error: the run exits "needs funds" only when a step could not be paid for."""
        balance = max(self.gate.balance(), 0)
        self.totals.extra.update(sender_eth=eth(balance), reserve_eth=eth(self.reserve),
                                 below_reserve=balance < self.reserve)

    def _sent(self, step: Step, *, finalized: int = 0, credited: int = 0) -> None:
        self.totals.sent += 1
        self.totals.fees_wei += step.fee_wei
        self.totals.finalized += finalized
        self.totals.credited += credited

    def _tokens(self, units: int) -> dict[str, str]:
        return {"amount": str(units), "amount_tokens": tokens(units, self.decimals)}

    @staticmethod
    def _tx(step: Step) -> dict[str, Any]:
        return {"tx": step.tx_hash, "gas_used": step.gas_used, "fee_wei": str(step.fee_wei),
                "fee_eth": eth(step.fee_wei)}


def run_payout(settings: Settings, report: Reporter, options: Options, totals: Totals, *,
               provider: str | None = None) -> ExitCode:
    """Connect (fees capped at payout.max_gas_gwei), pick the keys, run one pass. The caller holds the lock."""
    from node.chain.provider import connect
    from node.payout.keys import payout_keys

    chain = connect(settings, max_fee_gwei=settings.payout.max_gas_gwei)
    keys = payout_keys(settings, provider=provider, unlock=not options.dry_run)
    totals.extra.update(provider=keys.provider, sender=keys.sender, hot_key=keys.hot)
    run = PayoutRun(chain, settings, keys, report, options, totals)
    try:
        return run.execute()
    finally:
        totals.extra["payout"] = run.payout
