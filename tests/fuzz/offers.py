"""Hypothesis strategies for bad offers, one per category the fuzzing counts.

Each strategy draws a ``Case``: the offer as signed (or broken after signing), the wire body for POST /offers,
and the rejection codes the node may answer with. The codes are the ones ``chain.verify`` can give for that
kind of damage, so a forged offer refused for, say, ``not_accepting`` would show the fuzzing had missed
the check it meant to exercise. Every "valid part" is policy-acceptable (price, workload, params, expiry,
open to any provider): were a signature check skipped, the node would take the offer, and the tests'
"0 accepted" check would see it.

Encodings that mean the same offer (lower/upper-case hex, key order, whitespace) are not drawn as
"malformed": the node rightly accepts them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

from eth_account import Account
from eth_utils import keccak, to_checksum_address
from hypothesis import strategies as st

from node.chain.offers import (
    DOMAIN_NAME,
    DOMAIN_TYPEHASH,
    DOMAIN_VERSION,
    OFFER_FIELDS,
    UINT64_MAX,
    UINT256_MAX,
    ZERO_ADDRESS,
    JobOffer,
    struct_hash,
    workload_id,
)
from node.chain.verify import MAX_DURATION, SECP256K1_HALF_N, SECP256K1_N, UINT112_MAX, RejectReason, SignedOffer

VERIFY_CODES = frozenset(r.value for r in RejectReason)
SIGNATURE_SHAPE = frozenset({"bad_signature_length", "bad_signature_v", "malleable_signature", "signer_mismatch"})
TOKEN = 10**18
UINT_FIELDS = {f["name"]: (UINT64_MAX if f["type"] == "uint64" else UINT256_MAX) for f in OFFER_FIELDS
               if f["type"].startswith("uint")}


@dataclass(frozen=True)
class Domain:
    chain_id: int
    market: str
    name: str = DOMAIN_NAME
    version: str = DOMAIN_VERSION


@dataclass(frozen=True)
class Target:
    """What the strategies need to know about the node under test."""

    chain_id: int
    market: str
    requester_key: str
    head_time: int  # the node has seen a block at least this late
    replays: dict[str, tuple[JobOffer, bytes, bytes]]
    used_nonces: tuple[int, ...]

    @property
    def requester(self) -> str:
        return Account.from_key(self.requester_key).address

    @property
    def domain(self) -> Domain:
        return Domain(self.chain_id, self.market)


@dataclass(frozen=True)
class Case:
    category: str
    kind: str  # what exactly was done, for a failure message
    expect: frozenset[str]  # codes the node may answer with
    body: bytes  # POST /offers
    offer: JobOffer | None = None  # None where the body is not an offer at all
    signature: bytes = b""
    params: bytes = b""
    job_id: bytes = b""  # the id this offer has on the node's market (what an event would carry)


def digest(offer: JobOffer, domain: Domain) -> bytes:
    separator = keccak(DOMAIN_TYPEHASH + keccak(text=domain.name) + keccak(text=domain.version)
                       + domain.chain_id.to_bytes(32, "big") + bytes(12) + bytes.fromhex(domain.market[2:]))
    return keccak(b"\x19\x01" + separator + struct_hash(offer))


def sign(offer: JobOffer, key: str, domain: Domain) -> bytes:
    return bytes(Account.unsafe_sign_hash(digest(offer, domain), key).signature)


def envelope(offer: JobOffer, signature: bytes, params: bytes | None, chain_id: int, market: str) -> dict[str, Any]:
    return SignedOffer(offer, signature, chain_id, market, params).to_json()


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


# ---------------------------------------------------------------------------------------------- building blocks
keys = st.integers(1, SECP256K1_N - 1).map(lambda k: f"0x{k:064x}")
addresses = st.binary(min_size=20, max_size=20).map(lambda b: to_checksum_address(b))
words = st.binary(min_size=32, max_size=32)
big_nonces = st.integers(10**9, UINT256_MAX)


def matmul_params() -> st.SearchStrategy[bytes]:
    dims = st.integers(8, 48)
    return st.builds(lambda m, k, n, s: dumps({"m": m, "k": k, "n": n, "seed": s}), dims, dims, dims,
                     st.integers(0, 2**31))


@st.composite
def good_offers(draw: st.DrawFn, t: Target) -> tuple[JobOffer, bytes]:
    """A policy-acceptable offer from the target's requester and its params (not yet signed)."""
    params = draw(matmul_params())
    offer = JobOffer(requester=t.requester, provider=ZERO_ADDRESS, workload=workload_id("matmul-int8/v1"),
                     paramsHash=keccak(params), inputHash=b"\x00" * 32, inputURI="",
                     payment=draw(st.integers(TOKEN, 50 * TOKEN)), providerBond=draw(st.integers(0, TOKEN)),
                     maxDuration=draw(st.integers(1800, 7 * 86400)),
                     expiry=t.head_time + draw(st.integers(3600, 60 * 86400)), nonce=draw(big_nonces))
    return offer, params


def _case(t: Target, category: str, kind: str, expect: set[str] | frozenset[str], offer: JobOffer, sig: bytes,
          params: bytes, chain_id: int | None = None, market: str | None = None) -> Case:
    body = dumps(envelope(offer, sig, params, t.chain_id if chain_id is None else chain_id,
                          t.market if market is None else market))
    return Case(category, kind, frozenset(expect), body, offer, sig, params, digest(offer, t.domain))


# ---------------------------------------------------------------------------------------------- categories
@st.composite
def forged(draw: st.DrawFn, t: Target) -> Case:
    """Signed by someone other than the requester, or not signed by anyone (random but well-shaped bytes)."""
    offer, params = draw(good_offers(t))
    how = draw(st.sampled_from(["other_key", "other_offer", "random_bytes"]))
    if how == "other_key":
        key = draw(keys.filter(lambda k: k.lower() != t.requester_key.lower()))
        return _case(t, "forged", how, {"signer_mismatch"}, offer, sign(offer, key, t.domain), params)
    if how == "other_offer":  # the requester's genuine signature, over a different offer
        other = replace(offer, nonce=(offer.nonce + 1) % (UINT256_MAX + 1))
        return _case(t, "forged", how, {"signer_mismatch"}, offer, sign(other, t.requester_key, t.domain), params)
    r = draw(st.integers(0, 2**256 - 1))
    s = draw(st.integers(0, SECP256K1_HALF_N))
    v = draw(st.sampled_from([27, 28]))
    sig = r.to_bytes(32, "big") + s.to_bytes(32, "big") + bytes([v])
    return _case(t, "forged", how, {"signer_mismatch"}, offer, sig, params)


def _other_value(draw: st.DrawFn, name: str, old: Any) -> Any:
    kind = next(f["type"] for f in OFFER_FIELDS if f["name"] == name)
    if kind == "address":
        return draw(addresses.filter(lambda a: a != old))
    if kind == "bytes32":
        return draw(words.filter(lambda w: w != old))
    if kind == "string":
        return draw(st.text(max_size=64).filter(lambda s: s != old))
    return draw(st.integers(0, UINT_FIELDS[name]).filter(lambda v: v != old))


@st.composite
def mutated(draw: st.DrawFn, t: Target) -> Case:
    """A genuinely signed offer with one thing changed afterwards: a field, the signature, the params or
    the domain the envelope names."""
    offer, params = draw(good_offers(t))
    sig = sign(offer, t.requester_key, t.domain)
    what = draw(st.sampled_from(["field", "signature", "params", "chainId", "market"]))
    if what == "field":
        name = draw(st.sampled_from([f["name"] for f in OFFER_FIELDS]))
        bad = replace(offer, **{name: _other_value(draw, name, getattr(offer, name))})
        return _case(t, "mutated", f"field {name}", VERIFY_CODES, bad, sig, params)
    if what == "params":
        other = draw(st.binary(max_size=256).filter(lambda p: p != params))
        return _case(t, "mutated", "params", {"params_mismatch"}, offer, sig, other)
    if what == "chainId":
        chain = draw(st.integers(0, UINT256_MAX).filter(lambda c: c != t.chain_id))
        return _case(t, "mutated", "chainId", {"wrong_chain"}, offer, sig, params, chain_id=chain)
    if what == "market":
        market = draw(addresses.filter(lambda a: a.lower() != t.market.lower()))
        return _case(t, "mutated", "market", {"wrong_contract"}, offer, sig, params, market=market)
    op = draw(st.sampled_from(["flip", "truncate", "extend", "v", "high_s", "zero_r", "zero_s"]))
    b = bytearray(sig)
    if op == "flip":
        i = draw(st.integers(0, 64))
        b[i] ^= 1 << draw(st.integers(0, 7))
    elif op == "truncate":
        b = b[:draw(st.integers(0, 64))]
    elif op == "extend":
        b += draw(st.binary(min_size=1, max_size=64))
    elif op == "v":
        b[64] = draw(st.integers(0, 255).filter(lambda v: v != sig[64]))
    elif op == "high_s":
        s = int.from_bytes(sig[32:64], "big")
        b[32:64] = (SECP256K1_N - s).to_bytes(32, "big")
    elif op == "zero_r":
        b[:32] = bytes(32)
    else:
        b[32:64] = bytes(32)
    return _case(t, "mutated", f"signature {op}", SIGNATURE_SHAPE, offer, bytes(b), params)


@st.composite
def expired(draw: st.DrawFn, t: Target) -> Case:
    """Genuinely signed, but its expiry has passed (at or before a block the node has seen)."""
    offer, params = draw(good_offers(t))
    offer = replace(offer, expiry=draw(st.integers(0, t.head_time)))
    return _case(t, "expired", "expiry passed", {"expired"}, offer, sign(offer, t.requester_key, t.domain), params)


@st.composite
def wrong_domain(draw: st.DrawFn, t: Target) -> Case:
    """Genuinely signed by the requester, for another chain, market, domain name or version."""
    offer, params = draw(good_offers(t))
    part = draw(st.sampled_from(["chainId", "market", "name", "version"]))
    if part == "chainId":
        domain = replace(t.domain, chain_id=draw(st.integers(0, UINT256_MAX).filter(lambda c: c != t.chain_id)))
    elif part == "market":
        domain = replace(t.domain, market=draw(addresses.filter(lambda a: a.lower() != t.market.lower())))
    elif part == "name":
        domain = replace(t.domain, name=draw(st.text(max_size=40).filter(lambda n: n != DOMAIN_NAME)))
    else:
        domain = replace(t.domain, version=draw(st.text(max_size=8).filter(lambda v: v != DOMAIN_VERSION)))
    sig = sign(offer, t.requester_key, domain)
    honest = part in ("chainId", "market") and draw(st.booleans())  # the envelope names the signed domain
    if honest:
        code = "wrong_chain" if part == "chainId" else "wrong_contract"
        return _case(t, "wrong_domain", f"{part} (named)", {code}, offer, sig, params,
                     chain_id=domain.chain_id, market=domain.market)
    return _case(t, "wrong_domain", part, {"signer_mismatch"}, offer, sig, params)


@st.composite
def replayed(draw: st.DrawFn, t: Target) -> Case:
    """Offers whose one use is spent: already posted on chain (open or claimed by another provider), or
    genuinely signed new terms under a nonce the requester already used or revoked."""
    how = draw(st.sampled_from(sorted(t.replays) + ["used_nonce"]))
    if how != "used_nonce":  # the same offer, re-encoded as a sender may: the node must see through it
        offer, sig, params = t.replays[how]
        env = envelope(offer, sig, params, t.chain_id, t.market)
        body = draw(equivalent_encodings(env))
        return Case("replayed", f"posted ({how})", frozenset({"already_posted"}), body, offer, sig, params,
                    digest(offer, t.domain))
    offer, params = draw(good_offers(t))
    offer = replace(offer, nonce=draw(st.sampled_from(t.used_nonces)))
    return _case(t, "replayed", "used nonce", {"nonce_used"}, offer, sign(offer, t.requester_key, t.domain),
                 params)


@st.composite
def equivalent_encodings(draw: st.DrawFn, env: dict[str, Any]) -> bytes:
    """The same envelope in another valid spelling: address and hex case, key order, whitespace."""
    def recase(value: str) -> str:
        how = draw(st.sampled_from(["keep", "lower", "upper"]))
        return value if how == "keep" else "0x" + (value[2:].lower() if how == "lower" else value[2:].upper())

    offer = {k: recase(v) if isinstance(v, str) and v.startswith("0x") else v for k, v in env["offer"].items()}
    out = {k: recase(v) if isinstance(v, str) and v.startswith("0x") else v for k, v in env.items()}
    out["offer"] = dict(draw(st.permutations(list(offer.items()))))
    out = dict(draw(st.permutations(list(out.items()))))
    indent = draw(st.sampled_from([None, 0, 2]))
    return json.dumps(out, indent=indent, separators=None if indent is not None else (",", ":")).encode()


# ---------------------------------------------------------------------------------------------- malformed
_NON_CANONICAL = ["", " ", "01", "+1", "-1", " 1", "1 ", "1e3", "0x10", "1.0", "1_000", "\u0661", "\uff11",
                  "NaN", "Infinity", "9" * 79, str(2**256)]
_BAD_HEX = ["", "0x", "0x0", "0xg0", "00", "0X00", "0x 00", "0x00 ", "ff" * 32, "0x" + "zz" * 32]
_JSON_JUNK = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                       st.floats(allow_nan=False, allow_infinity=False), st.lists(st.integers(), max_size=3),
                       st.dictionaries(st.text(max_size=5), st.integers(), max_size=2))
_MALFORMED_BODIES = [b"", b"{", b"[]", b"null", b"0", b'"offer"', b"{}", b"\xff\xfe{}", b"[" * 300,
                     b'{"offer": NaN}', b"{\"offer\": Infinity}", b"\x00" * 64, "{\"é\": 1}".encode("latin-1")]


@st.composite
def malformed(draw: st.DrawFn, t: Target) -> Case:
    """A genuinely signed offer whose wire form is broken: JSON types, keys, uint and hex syntax, sizes, the
    signature's length, v and s; or a body that is no offer at all."""
    offer, params = draw(good_offers(t))
    sig = sign(offer, t.requester_key, t.domain)
    env = envelope(offer, sig, params, t.chain_id, t.market)
    how = draw(st.sampled_from(["type", "missing", "extra", "uint", "hex", "address", "uri", "signature", "body",
                                "no_params", "terms"]))
    mal = {"malformed"}
    fields = [f["name"] for f in OFFER_FIELDS]
    if how == "body":
        body = draw(st.one_of(st.sampled_from(_MALFORMED_BODIES), st.binary(max_size=512)))
        return Case("malformed", "body", frozenset(mal), body)
    if how == "type":
        where = draw(st.sampled_from(["envelope", "offer"]))
        obj = env if where == "envelope" else env["offer"]
        key = draw(st.sampled_from(sorted(obj)))
        obj[key] = draw(_JSON_JUNK)
        kind = f"type {where}.{key}"
    elif how == "missing":
        where = draw(st.sampled_from(["envelope", "offer"]))
        obj = env if where == "envelope" else env["offer"]
        key = draw(st.sampled_from(sorted(k for k in obj if k != "params")))
        del obj[key]
        kind = f"missing {where}.{key}"
    elif how == "extra":
        where = draw(st.sampled_from(["envelope", "offer"]))
        obj = env if where == "envelope" else env["offer"]
        key = draw(st.text(min_size=1, max_size=12).filter(lambda k: k not in obj))
        obj[key] = draw(_JSON_JUNK)
        kind = f"extra {where}.{key!r}"
    elif how == "uint":
        key = draw(st.sampled_from(["chainId"] + [f for f in fields if f in UINT_FIELDS]))
        obj = env if key == "chainId" else env["offer"]
        bad = draw(st.one_of(st.sampled_from(_NON_CANONICAL), st.integers(UINT_FIELDS.get(key, UINT256_MAX) + 1,
                                                                          2**300).map(str)))
        obj[key] = bad
        kind = f"uint {key}={bad[:20]!r}"
    elif how == "hex":
        key = draw(st.sampled_from(["workload", "paramsHash", "inputHash", "signature", "params"]))
        in_offer = key in ("workload", "paramsHash", "inputHash")
        obj = env["offer"] if in_offer else env
        options = [h for h in _BAD_HEX if in_offer or h != "0x"]  # "0x" is empty bytes: a well-formed value
        if in_offer:  # well-formed hex of the wrong size
            options += ["0x" + "ab" * 31, "0x" + "ab" * 33]
        bad = draw(st.one_of(st.sampled_from(options), st.text(max_size=80).filter(lambda s: not s.startswith("0x"))))
        obj[key] = bad
        kind = f"hex {key}={bad[:20]!r}"
    elif how == "address":
        key = draw(st.sampled_from(["requester", "provider", "market"]))
        obj = env if key == "market" else env["offer"]
        good = obj[key]
        flipped = "0x" + "".join(c.swapcase() if c.isalpha() else c for c in good[2:])
        bad = draw(st.sampled_from([good[:-1], good + "0", good[2:], "0x" + "g" * 40, flipped]))
        if bad == flipped and (flipped[2:] == flipped[2:].lower() or flipped[2:] == flipped[2:].upper()):
            bad = good[:-1]  # an all-one-case address carries no checksum: it is well-formed
        obj[key] = bad
        kind = f"address {key}={bad!r}"
    elif how == "uri":
        env["offer"]["inputURI"] = draw(st.sampled_from(["x" * 4097, "\U0001f600" * 1025]))
        kind = "uri too long"
    elif how == "no_params":
        del env["params"]
        kind = "no params"
    elif how == "signature":
        return draw(signature_shape(t))
    else:
        return draw(bad_terms(t))
    return Case("malformed", kind, frozenset(mal), dumps(env), offer, sig, params, digest(offer, t.domain))


@st.composite
def signature_shape(draw: st.DrawFn, t: Target) -> Case:
    """The requester's signature with a shape no EOA signature has: a length other than 65, v not 27/28, or
    the high-s twin of a genuine one (same signer, other bytes: what OpenZeppelin's ECDSA refuses)."""
    offer, params = draw(good_offers(t))
    sig = sign(offer, t.requester_key, t.domain)
    shape = draw(st.sampled_from(["length", "v", "high_s"]))
    if shape == "length":
        raw = draw(st.binary(max_size=200).filter(lambda b: len(b) != 65))
        code = "bad_signature_length"
    elif shape == "v":
        raw = sig[:64] + bytes([draw(st.integers(0, 255).filter(lambda v: v not in (27, 28)))])
        code = "bad_signature_v"
    else:
        s = int.from_bytes(sig[32:64], "big")
        raw = sig[:32] + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - sig[64]])
        code = "malleable_signature"
    return _case(t, "malformed", f"signature {shape}", {code}, offer, raw, params)


@st.composite
def bad_terms(draw: st.DrawFn, t: Target) -> Case:
    """Genuinely signed terms the market would revert on: zero requester, zero or oversized amounts, a
    duration of zero or beyond a year (values still valid for their Solidity types)."""
    offer, params = draw(good_offers(t))
    what = draw(st.sampled_from(["zero_requester", "zero_payment", "huge_payment", "huge_bond", "zero_duration",
                                 "long_duration"]))
    change = {"zero_requester": {"requester": ZERO_ADDRESS}, "zero_payment": {"payment": 0},
              "huge_payment": {"payment": draw(st.integers(UINT112_MAX + 1, UINT256_MAX))},
              "huge_bond": {"providerBond": draw(st.integers(UINT112_MAX + 1, UINT256_MAX))},
              "zero_duration": {"maxDuration": 0},
              "long_duration": {"maxDuration": draw(st.integers(MAX_DURATION + 1, UINT64_MAX))}}[what]
    bad = replace(offer, **change)
    return _case(t, "malformed", f"terms {what}", {"invalid_terms"}, bad, sign(bad, t.requester_key, t.domain),
                 params)


CATEGORIES = {"forged": forged, "mutated": mutated, "replayed": replayed, "expired": expired,
              "wrong_domain": wrong_domain, "malformed": malformed}


def any_case(t: Target) -> st.SearchStrategy[Case]:
    return st.one_of(*(make(t) for make in CATEGORIES.values()))
