"""OfferPosted events as the follower hands them to the node: a log built as JobMarket._post emits it,
decoded by the follower's own ``EventDecoder``, delivered to the running node's ``Intake.on_event``."""

from __future__ import annotations

import itertools

from eth_abi import encode as abi_encode
from eth_utils import keccak

from node.chain.follower import ChainEvent, EventDecoder
from node.chain.follower_store import RawLog
from node.chain.offers import OFFER_FIELDS, JobOffer
from tests.fuzz.stack import Stack

OFFER_TUPLE = "(" + ",".join(f["type"] for f in OFFER_FIELDS) + ")"
TOPIC = keccak(text=f"OfferPosted(bytes32,address,address,{OFFER_TUPLE},bytes,bytes)")
_LOGS = itertools.count(1)  # every built log gets its own block hash and position, as distinct logs do


def raw_log(market: str, offer: JobOffer, params: bytes, signature: bytes, job_id: bytes, n: int) -> RawLog:
    """The log JobMarket._post emits for this offer (indexed id, requester, provider; the rest ABI-encoded)."""
    topics = (TOPIC, job_id, bytes(12) + bytes.fromhex(offer.requester[2:]),
              bytes(12) + bytes.fromhex(offer.provider[2:]))
    data = abi_encode([OFFER_TUPLE, "bytes", "bytes"], [tuple(offer.as_struct().values()), params, signature])
    return RawLog(10**7 + n, n % 100, keccak(b"block" + n.to_bytes(8, "big")), keccak(b"tx" + n.to_bytes(8, "big")),
                  market, topics, data)


class Feeder:
    """Decodes logs exactly as the follower does and delivers them to the node's own intake, on its loop."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.decoder = EventDecoder({"market": stack.market, "registry": stack.proto.deployment.registry})

    def event(self, offer: JobOffer, params: bytes, signature: bytes, job_id: bytes) -> ChainEvent:
        ev = self.decoder.decode(raw_log(self.stack.market, offer, params, signature, job_id, next(_LOGS)))
        assert ev is not None and ev.name == "OfferPosted"
        return ev

    def deliver(self, ev: ChainEvent) -> None:
        self.stack.call(self.stack.node.intake.on_event(ev))  # an exception escaping on_event fails the test
