"""Copies of one offer arriving at the same time are decided once (the race bench.load found).

A requester that retries POST /offers, or sends the same offer by the API while it is also posted on chain,
must get the same answer for every copy, the offer must be counted once in offers_seen and decided once in
the journal, and no copy may fail with the journal's compare-and-set conflict (an HTTP 500). The real Intake
and Journal run here; the chain view and the policy are stand-ins that yield to the event loop, so the copies
interleave at every await the way concurrent HTTP requests do.
"""

from __future__ import annotations

import asyncio
import json

from eth_account import Account
from eth_utils import keccak

from node.chain.follower import ChainEvent
from node.chain.offers import ZERO_ADDRESS, JobOffer, sign_offer, workload_id
from node.chain.verify import SignedOffer
from node.jobs.intake import Intake
from node.jobs.journal import Journal
from node.jobs.policy import Decision, RejectCode
from node.metrics import Metrics

CHAIN_ID, MARKET, NOW = 31337, "0x5FC8d32690cc91D4c39d9d3abcBD16989F875707", 1_800_000_000


class SlowView:
    """No contract wallets, nothing posted, no nonce used; each answer takes a turn of the event loop."""

    async def has_code(self, address: str) -> bool:
        await asyncio.sleep(0.001)
        return False

    async def is_valid_signature(self, wallet: str, digest: bytes, signature: bytes) -> bool:
        return False

    async def nonce_used(self, requester: str, nonce: int) -> bool:
        await asyncio.sleep(0.001)
        return False

    async def job_exists(self, job_id: bytes) -> bool:
        await asyncio.sleep(0.001)
        return False


class TooCheap:
    def evaluate(self, offer, params, *, now, fee_bps, free_stake) -> Decision:
        return Decision(False, RejectCode.BELOW_PRICE_FLOOR, "payment below the price floor", None, None)


def signed_offer(nonce: int) -> SignedOffer:
    key = Account.create()
    params = json.dumps({"m": 8, "k": 8, "n": 8, "seed": nonce}).encode()
    o = JobOffer(requester=key.address, provider=ZERO_ADDRESS, workload=workload_id("matmul-int8/v1"),
                 paramsHash=keccak(params), inputHash=b"\x00" * 32, inputURI="", payment=1000, providerBond=0,
                 maxDuration=3600, expiry=NOW + 3600, nonce=nonce)
    return SignedOffer(o, sign_offer(o, key.key, CHAIN_ID, MARKET), CHAIN_ID, MARKET, params)


def intake(tmp_path) -> tuple[Intake, Journal, Metrics]:
    journal, metrics = Journal(tmp_path / "journal.db"), Metrics()
    return Intake(journal, TooCheap(), metrics, chain_id=CHAIN_ID, market=MARKET, view=SlowView(),
                  chain_time=lambda: NOW, fee_bps=lambda: 250), journal, metrics


def seen(metrics: Metrics, source: str) -> float:
    return metrics.offers_seen.labels(source)._value.get()


def decisions(journal: Journal, job_id: str) -> list[str]:
    return [t.to_state.value for t in journal.history(job_id)]


def test_concurrent_copies_of_a_direct_offer_get_one_answer_and_one_decision(tmp_path):
    ix, journal, metrics = intake(tmp_path)
    offer = signed_offer(7)
    body = json.dumps(offer.to_json()).encode()

    async def copies():
        return await asyncio.gather(*(ix.direct(body) for _ in range(4)), return_exceptions=True)

    replies = asyncio.run(copies())
    job_id = "0x" + offer.job_id.hex()
    assert not [r for r in replies if isinstance(r, BaseException)], replies
    assert {(r.accepted, r.job_id, r.code) for r in replies} == {(False, job_id, "below_price_floor")}
    assert seen(metrics, "direct") == 1
    assert decisions(journal, job_id) == ["seen", "rejected"]
    journal.close()


def test_a_direct_copy_racing_its_own_chain_event_is_decided_once(tmp_path):
    ix, journal, metrics = intake(tmp_path)
    offer = signed_offer(8)
    o = offer.offer
    event = ChainEvent("market", "OfferPosted", {
        "jobId": offer.job_id, "signature": offer.signature, "params": offer.params,
        "offer": {"requester": o.requester, "provider": o.provider, "workload": o.workload,
                  "paramsHash": o.paramsHash, "inputHash": o.inputHash, "inputURI": o.inputURI,
                  "payment": o.payment, "providerBond": o.providerBond, "maxDuration": o.maxDuration,
                  "expiry": o.expiry, "nonce": o.nonce}}, 10, b"\x01" * 32, b"\x02" * 32, 0)

    async def both():
        return await asyncio.gather(ix.direct(json.dumps(offer.to_json()).encode()), ix.on_event(event),
                                    return_exceptions=True)

    results = asyncio.run(both())
    job_id = "0x" + offer.job_id.hex()
    assert not [r for r in results if isinstance(r, BaseException)], results
    assert decisions(journal, job_id) == ["seen", "rejected"]
    assert seen(metrics, "direct") + seen(metrics, "chain") == 1
    journal.close()
