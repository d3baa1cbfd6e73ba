"""A walk through the protocol by hand (``python -m scripts.protocol_tour``): one job's on-chain life with
every provider step sent by this script instead of the node, on an embedded local chain. ``make demo`` runs
the real daemon instead (scripts/demo.py).

Starts anvil, deploys, registers and stakes a provider, has a requester sign an offer with eth-account,
posts it, claims it, commits a result, lets the challenge window pass, finalizes and withdraws to the
provider's payout address, printing each step with its gas and the balances at the end.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field

from eth_utils import keccak
from web3 import Web3

from node.chain.deploy import ProtocolParams
from node.chain.devnet import Anvil
from node.chain.offers import ZERO_ADDRESS, JobOffer, workload_id
from node.chain.protocol import Capacity, Protocol
from scripts.devnet import start_devnet  # one deploy path for devnet and demo

TOKEN = 10**18
STEPS = ("postOffer", "claim", "submitResult", "finalize")
DIRECT_STEPS = ("claimSigned", "submitResult", "finalize")


@dataclass
class RoundTrip:
    job_id: bytes
    gas: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.gas.values())


def advance_time(w3: Web3, seconds: int) -> None:
    """Devnet only: jump the chain clock (anvil's evm_increaseTime) and mine a block."""
    w3.provider.make_request("evm_increaseTime", [seconds])
    w3.provider.make_request("evm_mine", [])


def setup_provider(proto: Protocol, operator_key: str, payout: str, stake: int) -> None:
    cap = Capacity("cpu (demo)", 1, 0, 0, 0, keccak(text="no benchmark yet"))
    proto.register(operator_key, payout, cap, price_floor=10**12, endpoint="http://127.0.0.1:8600")
    proto.stake(operator_key, stake)


def round_trip(proto: Protocol, requester_key: str, operator_key: str, *, nonce: int, direct: bool = False,
               payment: int = 50 * TOKEN, bond: int = 5 * TOKEN, log=print) -> RoundTrip:
    """Runs one job to payment and returns its id and the gas of each transaction. `direct`: the offer is
    addressed to the provider and posted+claimed in one claimSigned transaction (the API path)."""
    w3 = proto.w3
    params = b'{"m":256,"k":256,"n":256,"seed":7}'
    now = w3.eth.get_block("latest")["timestamp"]
    offer = JobOffer(
        requester=proto.account(requester_key).address,
        provider=proto.account(operator_key).address if direct else ZERO_ADDRESS,
        workload=workload_id("matmul-int8/v1"), paramsHash=keccak(params), inputHash=b"\x00" * 32,
        inputURI="", payment=payment, providerBond=bond, maxDuration=3600, expiry=now + 600, nonce=nonce,
    )
    job_id = proto.job_id(offer)
    result = RoundTrip(job_id)
    signature = proto.sign(requester_key, offer)
    what = f"job {job_id.hex()[:16]}…  payment {payment / TOKEN:g} GPU, bond {bond / TOKEN:g} GPU"
    if direct:
        result.gas["claimSigned"] = proto.claim_signed(operator_key, offer, params, signature)["gasUsed"]
        log(f"  direct offer posted and claimed in one transaction: {what}")
    else:
        result.gas["postOffer"] = proto.post(requester_key, offer, params, signature)["gasUsed"]
        log(f"  posted   {what}")
        result.gas["claim"] = proto.claim(operator_key, job_id)["gasUsed"]
        log("  claimed  by the provider (bond locked from its stake)")
    root = keccak(b"demo result")
    result.gas["submitResult"] = proto.submit(operator_key, job_id, root, 4096, "http://127.0.0.1:8600/r")["gasUsed"]
    log(f"  committed result root {root.hex()[:16]}…; challenge window open")
    advance_time(w3, proto.market.functions.challengeWindow().call())
    result.gas["finalize"] = proto.finalize(requester_key, job_id)["gasUsed"]
    log("  finalized after the window: payment credited to the provider's payout address")
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--jobs", type=int, default=2, help="jobs to run (the first one pays first-use storage)")
    args = ap.parse_args(argv)
    started = time.monotonic()
    with Anvil() as anvil:
        print(f"local chain: anvil at {anvil.url}")
        dep, keys = start_devnet(anvil, 4, 1_000_000, ProtocolParams(), deployments_dir=None)
        proto = Protocol(Web3(Web3.HTTPProvider(anvil.url)), dep)
        requester, operator, payout = keys[1], keys[2], proto.account(keys[3]).address
        setup_provider(proto, operator, payout, stake=100 * TOKEN)
        proto.approve(requester, dep.market, 2**256 - 1)
        print(f"provider {proto.account(operator).address} registered; payout address {payout}")
        trips = []
        for i in range(args.jobs):
            print(f"job {i + 1}:")
            trips.append(round_trip(proto, requester, operator, nonce=i))
        print(f"job {args.jobs + 1} (direct offer, as sent to a provider's API):")
        direct = round_trip(proto, requester, operator, nonce=args.jobs, direct=True)
        before = proto.balance(payout)
        proto.withdraw(keys[3])
        print(f"payout address withdrew {(proto.balance(payout) - before) / TOKEN:g} GPU")
        print("\ngas per step (job 1 | last job):")
        for step in STEPS:
            print(f"  {step:<13} {trips[0].gas[step]:>8,} | {trips[-1].gas[step]:>8,}")
        print(f"  {'total':<13} {trips[0].total:>8,} | {trips[-1].total:>8,}")
        print("direct offer: " + ", ".join(f"{k} {v:,}" for k, v in direct.gas.items()) + f"; total {direct.total:,}")
    print(f"done in {time.monotonic() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
