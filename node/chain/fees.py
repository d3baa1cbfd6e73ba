"""EIP-1559 fee bids: what to offer for a new transaction, and how much more for a replacement.

The ceiling is the operator's promise to themselves ("never pay more than X gwei per gas"), so every bid
is clamped to it, and a transaction that cannot get in below it waits instead of overpaying. Replacement
bids rise by at least 12.5 % in both fee cap and tip: geth and most clients refuse replacements below
+10 %, and some below +12.5 %.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

GWEI = 10**9
BUMP_NUMERATOR, BUMP_DENOMINATOR = 9, 8  # +12.5 %


@dataclass(frozen=True)
class Fees:
    max_fee: int  # wei per gas
    tip: int  # wei per gas

    def __str__(self) -> str:
        return f"max fee {self.max_fee / GWEI:.3f} gwei, tip {self.tip / GWEI:.3f} gwei"


@dataclass(frozen=True)
class FeePolicy:
    ceiling: int  # wei per gas; the node never bids more
    min_tip: int  # wei per gas

    @classmethod
    def from_settings(cls, chain: Any) -> FeePolicy:
        return cls(ceiling=int(chain.max_fee_gwei * GWEI), min_tip=int(chain.priority_fee_gwei * GWEI))

    def market(self, history: Any) -> Fees:
        """Bid from ``eth_feeHistory`` (last entry of baseFeePerGas is the next block's): room for the base
        fee to double, plus the larger of the configured tip and the recent median tip."""
        next_base = int(history["baseFeePerGas"][-1])
        rewards = [int(r[0]) for r in history.get("reward") or [] if r]
        tip = max(self.min_tip, sorted(rewards)[len(rewards) // 2] if rewards else 0)
        return self.clamp(Fees(2 * next_base + tip, tip))

    def bump(self, old: Fees, market: Fees) -> Fees:
        """At least +12.5 % on both fields, or the market bid when that is higher, within the ceiling."""
        raised = Fees(_raise(old.max_fee), _raise(old.tip))
        return self.clamp(Fees(max(raised.max_fee, market.max_fee), max(raised.tip, market.tip)))

    def clamp(self, fees: Fees) -> Fees:
        max_fee = min(fees.max_fee, self.ceiling)
        return Fees(max_fee, min(fees.tip, max_fee))

    def at_ceiling(self, fees: Fees) -> bool:
        return fees.max_fee >= self.ceiling


def _raise(value: int) -> int:
    return max(value + 1, math.ceil(value * BUMP_NUMERATOR / BUMP_DENOMINATOR))
