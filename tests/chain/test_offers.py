"""Python's EIP-712 encoding of offers must equal the contract's, byte for byte."""

from __future__ import annotations

import pytest
from eth_account import Account
from eth_account.messages import _hash_eip191_message, encode_typed_data
from eth_utils import keccak

from node.chain.offers import (
    OFFER_TYPE_STRING,
    OFFER_TYPEHASH,
    UINT64_MAX,
    UINT256_MAX,
    ZERO_ADDRESS,
    JobOffer,
    OfferError,
    domain_separator,
    offer_digest,
    recover_signer,
    sign_offer,
    typed_data,
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
    assert OFFER_TYPEHASH == chain.proto.market.functions.OFFER_TYPEHASH().call()


def test_domain_separator_equals_contract(chain):
    market = chain.proto.market
    assert domain_separator(chain.deployment.chain_id, market.address) == market.functions.domainSeparator().call()
    assert domain_separator(chain.deployment.chain_id, market.address.lower()) == domain_separator(
        chain.deployment.chain_id, market.address)


@pytest.mark.parametrize("index", range(len(offers())))
def test_digest_equals_contract_and_eth_account(chain, index):
    offer = offers()[index]
    market = chain.proto.market
    on_chain = market.functions.hashOffer(offer.as_struct()).call()
    generic = _hash_eip191_message(encode_typed_data(full_message=typed_data(offer, chain.deployment.chain_id,
                                                                                  market.address)))
    assert offer_digest(offer, chain.deployment.chain_id, market.address) == on_chain == generic


@pytest.mark.parametrize("index", range(len(offers())))
def test_sign_offer_equals_a_wallet_signing_the_typed_data(index):
    acct = Account.create()
    offer = JobOffer(**{**offers()[index].as_struct(), "requester": acct.address})
    wallet = Account.sign_typed_data(acct.key, full_message=typed_data(offer, 7, MAX_ADDR)).signature
    assert sign_offer(offer, acct.key, 7, MAX_ADDR) == bytes(wallet)


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
    ("inputURI", "ipfs://\ud800", "inputURI"),
])
def test_malformed_fields_are_named(field, value, needle):
    with pytest.raises(OfferError, match=needle):
        JobOffer(**{**offers()[0].as_struct(), field: value})


def test_from_struct_round_trip():
    offer = offers()[1]
    assert JobOffer.from_struct(offer.as_struct()) == offer
    assert JobOffer.from_struct(tuple(offer.as_struct().values())) == offer


def test_recover_rejects_a_signature_of_the_wrong_length():
    with pytest.raises(OfferError, match="65 bytes"):
        recover_signer(offers()[0], b"\x01" * 64, 1, MAX_ADDR)


def test_json_round_trip_uses_strings_for_every_integer():
    for offer in offers():
        wire = offer.to_json()
        assert all(isinstance(wire[k], str) for k in wire)
        assert JobOffer.from_json(wire) == offer


@pytest.mark.parametrize("field,value,needle", [
    ("payment", 5, "offer.payment: must be a decimal string"),
    ("payment", "05", "offer.payment: not a canonical"),
    ("payment", "-1", "offer.payment: not a canonical"),
    ("payment", " 1", "offer.payment: not a canonical"),
    ("payment", "1_000", "offer.payment: not a canonical"),
    ("payment", "\u0661", "offer.payment: not a canonical"),  # an Arabic-Indic digit: int() would take it
    ("payment", str(UINT256_MAX + 1), "offer.payment: above"),
    ("expiry", str(UINT64_MAX + 1), "offer.expiry: above"),
    ("workload", "0x" + "00" * 31, "offer.workload: must be 32 bytes"),
    ("workload", "00" * 32, "offer.workload: not 0x-prefixed"),
    ("workload", "0x" + "zz" * 32, "offer.workload: not 0x-prefixed"),
    ("requester", "0x" + "11" * 19, "offer.requester: not a 20-byte"),
    ("requester", "0xabAbAbAbabABabABaBaBabaBabABABABAbAbabAb", "offer.requester: bad EIP-55"),
    ("requester", "0X" + "ab" * 20, "offer.requester: not a 20-byte"),
    ("inputURI", None, "offer.inputURI: must be a string"),
    ("inputURI", "x" * 4097, "offer.inputURI: longer"),
    ("inputURI", "é" * 2049, "offer.inputURI: longer"),
])
def test_json_rejects_malformed_fields_by_name(field, value, needle):
    wire = {**offers()[0].to_json(), field: value}
    with pytest.raises(OfferError, match=needle):
        JobOffer.from_json(wire)


def test_json_rejects_missing_and_extra_keys():
    wire = offers()[0].to_json()
    with pytest.raises(OfferError, match="missing key.*nonce"):
        JobOffer.from_json({k: v for k, v in wire.items() if k != "nonce"})
    with pytest.raises(OfferError, match="unexpected key.*'salt'"):
        JobOffer.from_json({**wire, "salt": "1"})
