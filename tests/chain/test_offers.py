"""Python's EIP-712 encoding of offers must equal the contract's, byte for byte."""

from __future__ import annotations

import pytest
from eth_account import Account
from eth_utils import keccak

from node.chain.offers import (
    OFFER_TYPE_STRING,
    UINT64_MAX,
    UINT256_MAX,
    ZERO_ADDRESS,
    JobOffer,
    OfferError,
    offer_digest,
    recover_signer,
    sign_offer,
    workload_id,
)

MAX_ADDR = "0x" + "ff" * 20


def offers() -> list[JobOffer]:
    base = dict(requester="0x" + "11" * 20, provider=ZERO_ADDRESS, workload=workload_id("matmul-int8/v1"),
                paramsHash=keccak(b"p"), inputHash=keccak(b"i"), inputURI="https://data.example/in.safetensors",
                payment=10**18, providerBond=10**17, maxDuration=3600, expiry=1_900_000_000, nonce=0)
    return [
        JobOffer(**base),
        JobOffer(**{**base, "inputURI": "ipfs://bafy/データ/模型-💾.safetensors?q=ü&x=ñ", "nonce": 1}),
        JobOffer(**{**base, "inputURI": ""}),
        JobOffer(**{**base, "inputURI": "x" * 3000}),
        JobOffer(requester=MAX_ADDR, provider=MAX_ADDR, workload=b"\xff" * 32, paramsHash=b"\xff" * 32,
                 inputHash=b"\xff" * 32, inputURI="\U0010ffff", payment=UINT256_MAX, providerBond=UINT256_MAX,
                 maxDuration=UINT64_MAX, expiry=UINT64_MAX, nonce=UINT256_MAX),
        JobOffer(requester=ZERO_ADDRESS, provider=ZERO_ADDRESS, workload=b"\x00" * 32, paramsHash=b"\x00" * 32,
                 inputHash=b"\x00" * 32, inputURI="", payment=0, providerBond=0, maxDuration=0, expiry=0, nonce=0),
    ]


def test_type_string_matches_contract(chain):
    assert keccak(text=OFFER_TYPE_STRING) == chain.proto.market.functions.OFFER_TYPEHASH().call()


@pytest.mark.parametrize("index", range(len(offers())))
def test_digest_equals_contract(chain, index):
    offer = offers()[index]
    market = chain.proto.market
    on_chain = market.functions.hashOffer(offer.as_struct()).call()
    assert offer_digest(offer, chain.deployment.chain_id, market.address) == on_chain


def test_digest_binds_chain_and_contract(chain):
    offer = offers()[0]
    market = chain.proto.market.address
    d = offer_digest(offer, 31337, market)
    assert offer_digest(offer, 1, market) != d
    assert offer_digest(offer, 31337, "0x" + "22" * 20) != d


def test_every_field_changes_the_digest():
    base = offers()[0]
    d = offer_digest(base, 1, MAX_ADDR)
    changed = dict(requester="0x" + "12" * 20, provider="0x" + "13" * 20, workload=keccak(b"w"),
                   paramsHash=keccak(b"q"), inputHash=keccak(b"j"), inputURI="https://data.example/in2",
                   payment=2, providerBond=3, maxDuration=4, expiry=5, nonce=6)
    for field, value in changed.items():
        other = JobOffer(**{**base.as_struct(), field: value})
        assert offer_digest(other, 1, MAX_ADDR) != d, field


def test_sign_and_recover():
    acct = Account.create()
    offer = JobOffer(**{**offers()[0].as_struct(), "requester": acct.address})
    sig = sign_offer(offer, acct.key, 5, MAX_ADDR)
    assert len(sig) == 65
    assert recover_signer(offer, sig, 5, MAX_ADDR) == acct.address
    assert recover_signer(offer, sig, 6, MAX_ADDR) != acct.address


@pytest.mark.parametrize("field,value,needle", [
    ("requester", "0x1234", "requester"),
    ("workload", b"\x00" * 31, "workload"),
    ("payment", -1, "payment"),
    ("payment", UINT256_MAX + 1, "payment"),
    ("maxDuration", UINT64_MAX + 1, "maxDuration"),
    ("nonce", True, "nonce"),
    ("inputURI", b"bytes", "inputURI"),
])
def test_malformed_fields_are_named(field, value, needle):
    with pytest.raises(OfferError, match=needle):
        JobOffer(**{**offers()[0].as_struct(), field: value})


def test_from_struct_round_trip():
    offer = offers()[1]
    assert JobOffer.from_struct(offer.as_struct()) == offer
    assert JobOffer.from_struct(tuple(offer.as_struct().values())) == offer
