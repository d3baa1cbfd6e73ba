"""Offer verification: every rejection carries the reason the contract would have, and the on-chain verdict
agrees with what postOffer actually does on the deployed market (anvil)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from eth_account import Account
from eth_utils import keccak, to_checksum_address
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st
from web3 import AsyncHTTPProvider, AsyncWeb3
from web3.exceptions import ContractCustomError, Web3RPCError

from node.chain.contracts import FORGE_OUT, decode_revert
from node.chain.deploy import send
from node.chain.devnet import free_port
from node.chain.offers import UINT64_MAX, UINT256_MAX, ZERO_ADDRESS, JobOffer, offer_digest, sign_offer
from node.chain.rpc import RpcClient
from node.chain.verify import (
    MAX_DURATION,
    SECP256K1_N,
    UINT112_MAX,
    OfferRejected,
    RejectReason,
    RpcOfferView,
    SignedOffer,
    Verdict,
    Web3OfferView,
    check_offer_local,
    recover_address,
    verify_offer,
)

R = RejectReason
CHAIN_ID = 31337
MARKET = "0x5FC8d32690cc91D4c39d9d3abcBD16989F875707"
OTHER_MARKET = "0x" + "42" * 20
NOW = 1_800_000_000
FIELDS = ["requester", "provider", "workload", "paramsHash", "inputHash", "inputURI", "payment", "providerBond",
          "maxDuration", "expiry", "nonce"]
on_session_loop = pytest.mark.asyncio(loop_scope="session")


def fast(n: int, **kw: Any) -> settings:
    return settings(derandomize=True, max_examples=n, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow], **kw)


# On-chain examples are self-contained (each builds its own offer), so a failing one is readable as drawn;
# shrinking it would replay transactions for minutes.
NO_SHRINK = dict(phases=[Phase.explicit, Phase.reuse, Phase.generate])

# ------------------------------------------------------------------ strategies and builders

keys_st = st.integers(1, SECP256K1_N - 1).map(lambda i: i.to_bytes(32, "big"))
addresses = st.binary(min_size=20, max_size=20).map(lambda b: to_checksum_address(b))


@st.composite
def terms(draw: st.DrawFn, now: int = NOW) -> dict[str, Any]:
    """Offer fields the contract accepts (everything but the requester)."""
    params = draw(st.binary(max_size=64))
    return dict(
        provider=draw(st.one_of(st.just(ZERO_ADDRESS), addresses)), workload=draw(st.binary(min_size=32, max_size=32)),
        paramsHash=keccak(params), inputHash=draw(st.binary(min_size=32, max_size=32)),
        inputURI=draw(st.text(max_size=40)), payment=draw(st.integers(1, UINT112_MAX)),
        providerBond=draw(st.integers(0, UINT112_MAX)), maxDuration=draw(st.integers(1, MAX_DURATION)),
        expiry=draw(st.integers(now + 1, UINT64_MAX)), nonce=draw(st.integers(0, UINT256_MAX)), params=params)


def make(key: bytes | str, fields: dict[str, Any], *, chain_id: int = CHAIN_ID, market: str = MARKET,
         sign_chain: int | None = None, sign_market: str | None = None, with_params: bool = True) -> SignedOffer:
    fields = dict(fields)
    params = fields.pop("params")
    offer = JobOffer(requester=Account.from_key(key).address, **fields)
    sig = sign_offer(offer, key, sign_chain or chain_id, sign_market or market)
    return SignedOffer(offer, sig, chain_id, market, params if with_params else None)


def local(signed: SignedOffer, now: int = NOW) -> Verdict:
    return check_offer_local(signed, chain_id=CHAIN_ID, market=MARKET, now=now)


def with_sig(signed: SignedOffer, sig: bytes) -> SignedOffer:
    return SignedOffer(signed.offer, sig, signed.chain_id, signed.market, signed.params)


def high_s_twin(sig: bytes) -> bytes:
    s = int.from_bytes(sig[32:64], "big")
    return sig[:32] + (SECP256K1_N - s).to_bytes(32, "big") + bytes((55 - sig[64],))  # 27 <-> 28


def assert_rejected(verdict: Verdict, reason: RejectReason) -> None:
    assert not verdict.ok and verdict.reason is reason, verdict


# ------------------------------------------------------------------ local checks


@fast(60)
@given(key=keys_st, fields=terms(), with_params=st.booleans())
def test_valid_offers_from_random_keys_are_accepted(key, fields, with_params):
    signed = make(key, fields, with_params=with_params)
    verdict = local(signed)
    assert verdict == Verdict(True, None, "", offer_digest(signed.offer, CHAIN_ID, MARKET))


@fast(40)
@given(key=keys_st, forger=keys_st, fields=terms())
def test_an_offer_signed_by_another_key_is_signer_mismatch(key, forger, fields):
    assume(key != forger)
    genuine = make(key, fields)
    forged = with_sig(genuine, sign_offer(genuine.offer, forger, CHAIN_ID, MARKET))
    verdict = local(forged)
    assert_rejected(verdict, R.SIGNER_MISMATCH)
    assert Account.from_key(forger).address in verdict.detail  # the signature is valid, just not the requester's


@fast(80)
@given(key=keys_st, fields=terms(), other=terms(), field=st.sampled_from(FIELDS), other_key=keys_st)
def test_any_field_changed_after_signing_is_signer_mismatch(key, fields, other, field, other_key):
    signed = make(key, fields, with_params=False)
    new = Account.from_key(other_key).address if field == "requester" else other[field]
    assume(new != getattr(signed.offer, field))
    mutated = JobOffer(**{**signed.offer.as_struct(), field: new})
    assert_rejected(local(SignedOffer(mutated, signed.signature, CHAIN_ID, MARKET)), R.SIGNER_MISMATCH)


@fast(40)
@given(key=keys_st, fields=terms())
def test_the_high_s_twin_of_a_valid_signature_is_malleable(key, fields):
    signed = make(key, fields)
    twin = high_s_twin(signed.signature)
    # The twin is a perfectly good secp256k1 signature by the same key: only the low-s rule stops it.
    assert recover_address(signed.job_id, twin) == bytes.fromhex(signed.offer.requester[2:])
    assert_rejected(local(with_sig(signed, twin)), R.MALLEABLE_SIGNATURE)


@fast(40)
@given(key=keys_st, fields=terms(), v=st.integers(0, 255).filter(lambda v: v not in (27, 28)))
def test_v_other_than_27_or_28_is_refused(key, fields, v):
    signed = make(key, fields)
    assert_rejected(local(with_sig(signed, signed.signature[:64] + bytes((v,)))), R.BAD_SIGNATURE_V)


@fast(40)
@given(key=keys_st, fields=terms(), sig=st.binary(max_size=200).filter(lambda b: len(b) != 65))
def test_an_eoa_signature_must_be_65_bytes(key, fields, sig):
    assert_rejected(local(with_sig(make(key, fields), sig)), R.BAD_SIGNATURE_LENGTH)


@fast(30)
@given(key=keys_st, fields=terms(), r=st.sampled_from([0, SECP256K1_N, 2**256 - 1]))
def test_a_signature_that_recovers_nothing_is_signer_mismatch(key, fields, r):
    signed = make(key, fields)
    sig = r.to_bytes(32, "big") + signed.signature[32:]
    assert_rejected(local(with_sig(signed, sig)), R.SIGNER_MISMATCH)


@fast(40)
@given(key=keys_st, fields=terms(now=0), now=st.integers(0, UINT64_MAX))
def test_expiry_is_compared_exactly_as_the_contract_does(key, fields, now):
    signed = make(key, fields)
    verdict = local(signed, now=now)
    if signed.offer.expiry <= now:  # JobMarket._post: `offer.expiry <= block.timestamp` reverts
        assert_rejected(verdict, R.EXPIRED)
    else:
        assert verdict.ok, verdict
    assert_rejected(local(signed, now=signed.offer.expiry), R.EXPIRED)
    assert local(signed, now=signed.offer.expiry - 1).ok


@fast(40)
@given(key=keys_st, fields=terms(), chain_id=st.integers(0, UINT256_MAX), market=addresses)
def test_wrong_domain_is_named_by_the_envelope_or_caught_by_the_signature(key, fields, chain_id, market):
    assume(chain_id != CHAIN_ID and market != to_checksum_address(MARKET))
    # The envelope honestly names another chain or market.
    assert_rejected(local(make(key, fields, chain_id=chain_id)), R.WRONG_CHAIN)
    assert_rejected(local(make(key, fields, market=market)), R.WRONG_CONTRACT)
    # Signed for another domain but presented as ours: the signature no longer recovers to the requester.
    assert_rejected(local(make(key, fields, sign_chain=chain_id or 1)), R.SIGNER_MISMATCH)
    assert_rejected(local(make(key, fields, sign_market=market)), R.SIGNER_MISMATCH)


@fast(30)
@given(key=keys_st, fields=terms(), params=st.binary(max_size=64))
def test_params_must_hash_to_params_hash(key, fields, params):
    signed = make(key, fields)
    assume(params != signed.params)
    assert_rejected(local(SignedOffer(signed.offer, signed.signature, CHAIN_ID, MARKET, params)), R.PARAMS_MISMATCH)


@pytest.mark.parametrize("field,value", [
    ("payment", 0), ("payment", UINT112_MAX + 1), ("providerBond", UINT112_MAX + 1),
    ("maxDuration", 0), ("maxDuration", MAX_DURATION + 1),
])
def test_terms_the_contract_refuses_are_invalid_terms(field, value):
    key = b"\x01" * 32
    verdict = local(make(key, {**_fixed_terms(), field: value}))
    assert_rejected(verdict, R.INVALID_TERMS)
    assert field in verdict.detail


def test_zero_requester_is_invalid_terms():
    offer = JobOffer(requester=ZERO_ADDRESS, **{k: v for k, v in _fixed_terms().items() if k != "params"})
    assert_rejected(local(SignedOffer(offer, b"\x00" * 65, CHAIN_ID, MARKET)), R.INVALID_TERMS)


def _fixed_terms() -> dict[str, Any]:
    return dict(provider=ZERO_ADDRESS, workload=keccak(b"w"), paramsHash=keccak(b"p"), inputHash=keccak(b"i"),
                inputURI="ipfs://x", payment=10**18, providerBond=10**17, maxDuration=3600, expiry=NOW + 3600,
                nonce=0, params=b"p")


def test_reason_values_are_stable():
    assert {r.value for r in RejectReason} == {
        "malformed", "wrong_chain", "wrong_contract", "expired", "invalid_terms", "params_mismatch",
        "bad_signature_length", "bad_signature_v", "malleable_signature", "signer_mismatch",
        "contract_signature_invalid", "nonce_used", "already_posted"}


# ------------------------------------------------------------------ wire format

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12)


@fast(60)
@given(key=keys_st, fields=terms(), with_params=st.booleans(), sig=st.binary(max_size=300))
def test_json_round_trip(key, fields, with_params, sig):
    signed = with_sig(make(key, fields, with_params=with_params), sig)
    wire = json.dumps(signed.to_json())
    assert SignedOffer.from_json(wire) == signed
    assert SignedOffer.from_json(json.loads(wire)) == signed
    assert ("params" in json.loads(wire)) == with_params


@fast(250)
@given(key=keys_st, fields=terms(), data=st.data())
def test_damaged_envelopes_are_malformed_naming_the_field(key, fields, data):
    wire = make(key, fields).to_json()
    target = data.draw(st.sampled_from(["offer." + f for f in FIELDS] + ["signature", "chainId", "market",
                                                                         "params", "offer", "envelope"]))
    action = data.draw(st.sampled_from(["replace", "delete", "extra"]))
    outer, _, inner = target.partition(".")
    holder = wire["offer"] if inner else wire
    key_name = inner or outer
    if action == "replace" and target != "envelope":
        holder[key_name] = data.draw(json_values.filter(lambda v: not isinstance(v, str)))
    elif action == "delete" and target not in ("envelope", "params"):
        del holder[key_name]
    else:
        wire[data.draw(st.text(max_size=8).filter(lambda k: k not in wire))] = data.draw(json_values)
        key_name = "unexpected key"
    for form in (wire, json.dumps(wire)):
        with pytest.raises(OfferRejected) as caught:
            SignedOffer.from_json(form)
        assert caught.value.reason is R.MALFORMED
        assert key_name in caught.value.detail, caught.value.detail


@fast(300)
@given(obj=json_values | st.text() | st.binary())
def test_garbage_only_ever_raises_offer_rejected(obj):
    for form in (obj, json.dumps(obj) if not isinstance(obj, bytes) else obj):
        with pytest.raises(OfferRejected) as caught:
            SignedOffer.from_json(form)
        assert caught.value.reason is R.MALFORMED and caught.value.verdict.reason is R.MALFORMED


@pytest.mark.parametrize("text", ["[" * 200_000, "{\"a\":" * 100_000, "NaN", "-Infinity", "\"\\ud800\"", "1e999"])
def test_hostile_json_text_is_malformed_not_a_crash(text):
    # Deep nesting used to kill the interpreter: eth-account raises the recursion limit to 100000.
    with pytest.raises(OfferRejected):
        SignedOffer.from_json(text)


@pytest.mark.parametrize("field,value,needle", [
    ("signature", "0x" + "00" * 4097, "signature: longer"),
    ("signature", "0x123", "signature: not 0x-prefixed hex"),
    ("params", "0x" + "00" * (64 * 1024 + 1), "params: longer"),
    ("params", None, "params: must be a 0x-hex string"),
    ("chainId", 31337, "chainId: must be a decimal string"),
    ("chainId", "0x7a69", "chainId: not a canonical"),
    ("market", "0x" + "00" * 19, "market: not a 20-byte"),
])
def test_envelope_fields_are_bounded_and_typed(field, value, needle):
    wire = {**make(b"\x01" * 32, _fixed_terms()).to_json(), field: value}
    with pytest.raises(OfferRejected, match=needle):
        SignedOffer.from_json(wire)


# ------------------------------------------------------------------ on chain


@pytest_asyncio.fixture(loop_scope="session")
async def view(chain) -> AsyncIterator[Web3OfferView]:
    w3 = AsyncWeb3(AsyncHTTPProvider(chain.anvil.url))
    try:
        yield Web3OfferView(w3, chain.deployment.market)
    finally:
        await w3.provider.disconnect()


@pytest.fixture
def requester(chain) -> str:
    """A dev key holding tokens that has approved the market, so its offers can really be posted."""
    chain.proto.approve(chain.keys[1], chain.proto.market.address, 2**256 - 1)
    return chain.keys[1]


def chain_now(chain) -> int:
    return chain.w3.eth.get_block("latest")["timestamp"]


def simulate_post(chain, signed: SignedOffer) -> str:
    """What postOffer does with this offer right now: "ok" or the name of the contract's error."""
    call = chain.proto.market.functions.postOffer(signed.offer.as_struct(), signed.params or b"", signed.signature)
    try:
        call.call({"from": chain.addr(3)})
    except ContractCustomError as exc:
        return decode_revert(exc.data).split("(")[0]
    return "ok"


async def verify(chain, view: Web3OfferView, signed: SignedOffer, now: int | None = None) -> Verdict:
    return await verify_offer(signed, chain_id=chain.deployment.chain_id, market=chain.deployment.market,
                              now=chain_now(chain) if now is None else now, view=view)


CONTRACT_ERROR = {None: "ok", R.SIGNER_MISMATCH: "InvalidSignature", R.MALLEABLE_SIGNATURE: "InvalidSignature",
                  R.BAD_SIGNATURE_V: "InvalidSignature", R.BAD_SIGNATURE_LENGTH: "InvalidSignature",
                  R.CONTRACT_SIGNATURE_INVALID: "InvalidSignature", R.EXPIRED: "OfferExpired",
                  R.PARAMS_MISMATCH: "ParamsHashMismatch", R.NONCE_USED: "NonceUsed", R.ALREADY_POSTED: "NonceUsed"}
TAMPERS = {"none": None, "forged": R.SIGNER_MISMATCH, "mutated": R.SIGNER_MISMATCH, "other_chain": R.SIGNER_MISMATCH,
           "other_market": R.SIGNER_MISMATCH, "high_s": R.MALLEABLE_SIGNATURE, "bad_v": R.BAD_SIGNATURE_V,
           "short": R.BAD_SIGNATURE_LENGTH, "expired": R.EXPIRED, "params": R.PARAMS_MISMATCH,
           "invalidated": R.NONCE_USED, "nonce_taken": R.NONCE_USED, "posted": R.ALREADY_POSTED}


@on_session_loop
@pytest.mark.parametrize("tamper", sorted(TAMPERS))  # every kind, not whichever ones the draw favours
@fast(3, **NO_SHRINK)
@given(nonce=st.integers(0, UINT256_MAX), payment=st.integers(1, 10**24), uri=st.text(max_size=30))
async def test_verdict_agrees_with_post_offer_on_chain(chain, view, requester, tamper, nonce, payment, uri):
    snap = chain.w3.provider.make_request("evm_snapshot", [])["result"]
    try:
        now, dep = chain_now(chain), chain.deployment
        fields = {**_fixed_terms(), "nonce": nonce, "payment": payment, "inputURI": uri,
                  "expiry": now - 1 if tamper == "expired" else now + 3600}
        signed = make(requester, fields, chain_id=dep.chain_id, market=dep.market,
                      sign_chain=dep.chain_id + 1 if tamper == "other_chain" else None,
                      sign_market=OTHER_MARKET if tamper == "other_market" else None)
        sig, offer = signed.signature, signed.offer
        if tamper == "forged":
            sig = sign_offer(offer, chain.keys[2], dep.chain_id, dep.market)
        elif tamper == "high_s":
            sig = high_s_twin(sig)
        elif tamper == "bad_v":
            sig = sig[:64] + b"\x01"
        elif tamper == "short":
            sig = sig[:64]
        elif tamper == "mutated":
            offer = JobOffer(**{**offer.as_struct(), "payment": payment + 1})
        elif tamper == "invalidated":
            chain.proto.send(requester, chain.proto.market.functions.invalidateNonce(nonce))
        elif tamper in ("posted", "nonce_taken"):
            chain.proto.post(requester, signed.offer, signed.params, sig)
            if tamper == "nonce_taken":  # a different offer re-using the posted one's nonce
                offer = JobOffer(**{**offer.as_struct(), "inputURI": uri + "!"})
                sig = sign_offer(offer, requester, dep.chain_id, dep.market)
        signed = SignedOffer(offer, sig, dep.chain_id, dep.market,
                             b"other params" if tamper == "params" else signed.params)
        verdict = await verify(chain, view, signed)
        assert verdict.reason is TAMPERS[tamper], verdict
        assert verdict.ok is (tamper == "none")
        assert simulate_post(chain, signed) == CONTRACT_ERROR[verdict.reason]
        if tamper == "posted":  # the local check cannot see a replay; only the chain can
            assert check_offer_local(signed, chain_id=dep.chain_id, market=dep.market, now=now).ok
    finally:
        assert chain.w3.provider.make_request("evm_revert", [snap])["result"] is True


def _post_at(chain, key: str, signed: SignedOffer, timestamp: int) -> int:
    """Mines postOffer in a block with exactly this timestamp (fixed gas: estimation would run elsewhen)."""
    sender = Account.from_key(key)
    tx = chain.proto.market.functions.postOffer(signed.offer.as_struct(), signed.params, signed.signature)
    tx = tx.build_transaction({"from": sender.address, "gas": 600_000,
                               "nonce": chain.w3.eth.get_transaction_count(sender.address)})
    chain.w3.provider.make_request("evm_setNextBlockTimestamp", [timestamp])
    tx_hash = chain.w3.eth.send_raw_transaction(sender.sign_transaction(tx).raw_transaction)
    return chain.w3.eth.wait_for_transaction_receipt(tx_hash)["status"]


@on_session_loop
async def test_expiry_boundary_is_the_contracts(chain, view, requester):
    dep = chain.deployment
    at = chain_now(chain) + 100
    for expiry, accepted in ((at, False), (at + 101, True)):
        signed = make(requester, {**_fixed_terms(), "expiry": expiry, "nonce": expiry}, chain_id=dep.chain_id,
                      market=dep.market)
        verdict = await verify(chain, view, signed, now=at)
        assert verdict.ok is accepted and verdict.reason is (None if accepted else R.EXPIRED), verdict
        assert _post_at(chain, requester, signed, at) == (1 if accepted else 0)
        at += 100


@on_session_loop
async def test_replays_are_caught_only_on_chain(chain, view, requester):
    dep = chain.deployment
    signed = make(requester, {**_fixed_terms(), "expiry": chain_now(chain) + 3600, "nonce": 7},
                  chain_id=dep.chain_id, market=dep.market)
    assert (await verify(chain, view, signed)).ok
    chain.proto.post(requester, signed.offer, signed.params, signed.signature)
    assert chain.proto.job(signed.job_id)["state"] == 1  # Open: the id we compute is the contract's
    assert_rejected(await verify(chain, view, signed), R.ALREADY_POSTED)
    fresh = make(requester, {**_fixed_terms(), "expiry": chain_now(chain) + 3600, "nonce": 8},
                 chain_id=dep.chain_id, market=dep.market)
    chain.proto.send(requester, chain.proto.market.functions.invalidateNonce(8))
    assert_rejected(await verify(chain, view, fresh), R.NONCE_USED)


def _deploy_wallet(chain, signer: str) -> str:
    art = json.loads((FORGE_OUT / "JobMarket.t.sol" / "SmartWallet.json").read_text())
    factory = chain.w3.eth.contract(abi=art["abi"], bytecode=art["bytecode"]["object"])
    deployer = Account.from_key(chain.keys[0])
    receipt = send(chain.w3, deployer, factory.constructor(signer).build_transaction({"from": deployer.address}))
    wallet = chain.w3.eth.contract(address=receipt["contractAddress"], abi=art["abi"])
    chain.proto.mint(chain.keys[0], wallet.address, 10**21)
    send(chain.w3, deployer, wallet.functions.approve(chain.proto.token.address, chain.proto.market.address))
    return wallet.address


@on_session_loop
@fast(3, **NO_SHRINK)
@given(owner=keys_st, stranger=keys_st)
async def test_eip1271_wallet_offers(chain, view, owner, stranger):
    assume(owner != stranger)
    dep = chain.deployment
    wallet = _deploy_wallet(chain, Account.from_key(owner).address)
    offer = JobOffer(requester=wallet, **{k: v for k, v in _fixed_terms().items() if k != "params"}
                     | {"expiry": chain_now(chain) + 3600, "nonce": int.from_bytes(owner[:8], "big")})

    def signed_by(key: bytes, cut: int = 65) -> SignedOffer:
        return SignedOffer(offer, sign_offer(offer, key, dep.chain_id, dep.market)[:cut], dep.chain_id, dep.market,
                           b"p")

    good = signed_by(owner)
    # Locally the signature does not recover to the requester (a contract has no key): only the chain can tell.
    assert_rejected(check_offer_local(good, chain_id=dep.chain_id, market=dep.market, now=chain_now(chain)),
                    R.SIGNER_MISMATCH)
    for bad in (signed_by(stranger), signed_by(owner, cut=64), with_sig(good, high_s_twin(good.signature))):
        assert_rejected(await verify(chain, view, bad), R.CONTRACT_SIGNATURE_INVALID)
        assert simulate_post(chain, bad) == "InvalidSignature"
    assert (await verify(chain, view, good)).ok
    assert simulate_post(chain, good) == "ok"
    chain.proto.post(chain.keys[3], good.offer, good.params, good.signature)
    assert_rejected(await verify(chain, view, good), R.ALREADY_POSTED)


@on_session_loop
async def test_a_contract_without_is_valid_signature_is_contract_signature_invalid(chain, view):
    token = chain.proto.token.address  # has code, no isValidSignature: the call reverts
    offer = JobOffer(requester=token, **{k: v for k, v in _fixed_terms().items() if k != "params"}
                     | {"expiry": chain_now(chain) + 3600})
    signed = SignedOffer(offer, b"\x01" * 65, chain.deployment.chain_id, chain.deployment.market)
    assert await view.has_code(token) and not await view.has_code(chain.addr(1))
    assert not await view.is_valid_signature(token, signed.job_id, signed.signature)
    assert_rejected(await verify(chain, view, signed), R.CONTRACT_SIGNATURE_INVALID)


@on_session_loop
async def test_an_unreachable_chain_raises_rather_than_rejecting(chain):
    w3 = AsyncWeb3(AsyncHTTPProvider("http://127.0.0.1:9", exception_retry_configuration=None))
    signed = make(chain.keys[1], {**_fixed_terms(), "expiry": NOW}, chain_id=chain.deployment.chain_id,
                  market=chain.deployment.market)
    try:
        with pytest.raises(Exception) as caught:
            await verify_offer(signed, chain_id=chain.deployment.chain_id, market=chain.deployment.market,
                               now=NOW - 10, view=Web3OfferView(w3, chain.deployment.market))
        assert not isinstance(caught.value, AssertionError)
    finally:
        await w3.provider.disconnect()


@on_session_loop
async def test_the_node_view_fails_over_between_endpoints(chain, requester):
    """What the node uses: the same checks through RpcClient, here with a dead first endpoint."""
    dep = chain.deployment
    rpc = RpcClient([f"http://127.0.0.1:{free_port()}", chain.anvil.url], timeout=2)
    try:
        node_view = RpcOfferView(rpc, dep.market)
        signed = make(requester, {**_fixed_terms(), "expiry": chain_now(chain) + 3600, "nonce": 9},
                      chain_id=dep.chain_id, market=dep.market)
        assert (await verify(chain, node_view, signed)).ok
        chain.proto.post(requester, signed.offer, signed.params, signed.signature)
        assert_rejected(await verify(chain, node_view, signed), R.ALREADY_POSTED)
        assert rpc.endpoints[0].failed >= 1 and rpc.endpoints[1].answered >= 3
    finally:
        await rpc.close()


@pytest.mark.parametrize(("answer", "needle"), [
    ({"error": {"code": -32000, "message": "header not found"}}, "header not found"),
    ({"result": None}, "malformed answer"),
    ({"result": "0xzz"}, "malformed answer"),
    ({"result": 12}, "malformed answer"),
    ({"result": "0x" + "00" * 7}, "undecodable answer"),  # not a whole word: eth-abi refuses it
    (["not", "an", "object"], "malformed answer"),
])
@on_session_loop
async def test_a_lying_rpc_answer_is_an_error_not_a_verdict(answer, needle):
    """The view's reads go to the provider without web3's formatters, so it checks each answer itself: a
    JSON-RPC error, a non-hex or undecodable result raises Web3RPCError (the node retries later), never a
    verdict built on garbage. A real HTTP server plays the RPC."""
    from aiohttp import web

    async def rpc(request: web.Request) -> web.Response:
        body = await request.json()
        if isinstance(answer, list):
            return web.json_response(answer)
        return web.json_response({"jsonrpc": "2.0", "id": body["id"], **answer})

    app = web.Application()
    app.router.add_post("/", rpc)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    w3 = AsyncWeb3(AsyncHTTPProvider(f"http://127.0.0.1:{port}", exception_retry_configuration=None))
    view = Web3OfferView(w3, "0x" + "11" * 20)
    try:
        with pytest.raises(Web3RPCError, match=needle):
            await view.nonce_used("0x" + "22" * 20, 5)
        if "undecodable" not in needle:  # eth_getCode takes any hex, even 7 bytes
            with pytest.raises(Web3RPCError, match=needle):
                await view.has_code("0x" + "22" * 20)
    finally:
        await w3.provider.disconnect()
        await runner.cleanup()
