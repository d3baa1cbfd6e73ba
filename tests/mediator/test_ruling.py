"""Rulings off chain: the hand-encoded digest equals eth-account's EIP-712 hash, signatures recover under the
contract's rules, ruling files are strict, and collect() picks and orders signatures as resolve() needs."""

from __future__ import annotations

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils import keccak

from node.chain.keys import Signer
from node.mediator.ruling import (
    SECP256K1_N,
    Ruling,
    RulingError,
    collect,
    recover_signer,
    ruling_digest,
    typed_data,
)

SET = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
JOB = bytes(range(32))
KEYS = [keccak(text=f"mediator {i}") for i in range(4)]
SIGNERS = [Signer(Account.from_key(k)) for k in KEYS]


def test_digest_is_the_eip712_hash_and_binds_every_field() -> None:
    for verdict in (True, False):
        signable = encode_typed_data(full_message=typed_data(31337, SET, JOB, verdict))
        assert ruling_digest(31337, SET, JOB, verdict) == keccak(b"\x19" + signable.version + signable.header
                                                                 + signable.body)
    digests = {ruling_digest(31337, SET, JOB, True), ruling_digest(31337, SET, JOB, False),
               ruling_digest(1, SET, JOB, True), ruling_digest(31337, "0x" + "11" * 20, JOB, True),
               ruling_digest(31337, SET, bytes(32), True)}
    assert len(digests) == 5
    assert ruling_digest(31337, SET.lower(), "0x" + JOB.hex(), True) == ruling_digest(31337, SET, JOB, True)
    with pytest.raises(RulingError):
        ruling_digest(31337, SET, JOB, 1)  # type: ignore[arg-type]
    with pytest.raises(RulingError):
        ruling_digest(31337, SET, b"short", True)


def test_sign_recover_and_the_contracts_signature_rules() -> None:
    ruling = Ruling.sign(SIGNERS[0], 31337, SET, JOB, False, reason="r", evidence={"x": 1})
    assert recover_signer(ruling.digest, ruling.signature) == SIGNERS[0].address
    assert ruling.signature[64] in (27, 28)
    r, s, v = ruling.signature[:32], int.from_bytes(ruling.signature[32:64], "big"), ruling.signature[64]
    high = r + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - v])  # the malleable twin: same key, refused
    with pytest.raises(RulingError, match="upper half"):
        recover_signer(ruling.digest, high)
    with pytest.raises(RulingError, match="v must be"):
        recover_signer(ruling.digest, ruling.signature[:64] + b"\x01")
    with pytest.raises(RulingError, match="65 bytes"):
        recover_signer(ruling.digest, ruling.signature[:64])


def test_ruling_files_round_trip_and_refuse_tampering() -> None:
    ruling = Ruling.sign(SIGNERS[1], 31337, SET, JOB, True, reason="within tolerance", evidence={"ok": True},
                         signed_at=5)
    obj = ruling.to_json()
    assert Ruling.from_json(obj) == ruling
    assert obj["digest"] == "0x" + ruling.digest.hex()
    for change in ({"provider_was_right": False}, {"job_id": "0x" + "00" * 32}, {"chain_id": 1},
                   {"mediator_set": "0x" + "22" * 20}, {"signer": SIGNERS[2].address}):
        with pytest.raises(RulingError, match="not by the stated signer"):
            Ruling.from_json({**obj, **change}, "f.json")
    for change in ({"format": "x"}, {"provider_was_right": "yes"}, {"signature": "0x12"}, {"chain_id": True},
                   {"evidence": []}, {"job_id": "0x12"}, {"signer": "nope"}):
        with pytest.raises(RulingError, match="^f.json: "):
            Ruling.from_json({**obj, **change}, "f.json")
    assert Ruling.from_json({**obj, "digest": "0x" + "00" * 32, "reason": "edited"}).reason == "edited"  # unsigned


def _rulings(verdicts: dict[int, bool], job: bytes = JOB) -> list[Ruling]:
    return [Ruling.sign(SIGNERS[i], 31337, SET, job, v) for i, v in verdicts.items()]


def test_collect_orders_by_signer_and_needs_the_threshold() -> None:
    mediators = [s.address for s in SIGNERS[:3]]
    rulings = _rulings({0: False, 1: False, 2: False})
    decision = collect(reversed(rulings), mediators=mediators, threshold=2)
    assert decision.provider_was_right is False and not decision.ignored
    assert [int(a, 16) for a in decision.signers] == sorted(int(a, 16) for a in mediators)
    by_signer = {r.signer: r.signature for r in rulings}
    assert decision.signatures == [by_signer[a] for a in decision.signers]

    with pytest.raises(RulingError, match="not enough signatures: 0 say the provider was right, 1 wrong; 2 needed"):
        collect(rulings[:1], mediators=mediators, threshold=2)
    split = _rulings({0: True, 1: False, 2: True})
    assert collect(split, mediators=mediators, threshold=2).provider_was_right is True
    with pytest.raises(RulingError, match="both verdicts"):
        collect(split, mediators=mediators, threshold=1)
    # the same ruling twice counts once
    with pytest.raises(RulingError, match="not enough"):
        collect(rulings[:1] * 2, mediators=mediators, threshold=2)


def test_collect_sets_aside_outsiders_and_refuses_equivocation_and_mixed_jobs() -> None:
    mediators = [s.address for s in SIGNERS[:3]]
    outsider = _rulings({3: False})
    decision = collect(_rulings({0: False, 1: False}) + outsider, mediators=mediators, threshold=2)
    assert len(decision.signers) == 2 and decision.ignored == [f"{SIGNERS[3].address}: not a current mediator "
                                                              f"of {SET}"]
    with pytest.raises(RulingError, match="signed both verdicts"):
        collect(_rulings({0: False, 1: False}) + _rulings({0: True}), mediators=mediators, threshold=2)
    with pytest.raises(RulingError, match="different jobs"):
        collect(_rulings({0: False}) + _rulings({1: False}, job=bytes(32)), mediators=mediators, threshold=2)
    with pytest.raises(RulingError, match="no rulings"):
        collect([], mediators=mediators, threshold=1)
