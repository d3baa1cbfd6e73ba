"""Deciding whether a signed offer would be accepted by the JobMarket, before spending gas on it.

Every offer the node hears about (an ``OfferPosted`` log, or a direct offer POSTed to its API) is checked
here first. A rejection is a value with a machine-readable ``RejectReason`` so it can be counted, shown
and answered to the sender; it is never an exception, because a bad offer is an ordinary event.

The checks mirror the contract's ``_post`` and OpenZeppelin's ``SignatureChecker`` (5.7) exactly, since
the point is to predict the contract: a requester *with code* is asked via EIP-1271 (any signature
length, no ECDSA rules); one without code must give a 65-byte, low-s ECDSA signature with v in {27, 28}
that recovers to the requester itself. Recovering *some* address proves nothing.

The local checks (``check_offer_local``) need no chain and are cheap enough to run on everything that
arrives; ``verify_offer`` adds the on-chain facts (code, EIP-1271, nonce, replay) through an
``OfferChainView``. A failing RPC is not a verdict about the offer: it propagates, so the caller retries.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property, lru_cache
from typing import Any, Protocol

import coincurve
from eth_utils import is_address, keccak, to_checksum_address
from web3 import AsyncWeb3
from web3.exceptions import ContractLogicError, Web3RPCError
from web3.types import BlockIdentifier

from node.chain.contracts import load_abi, view_calldata, view_result
from node.chain.offers import (
    JobOffer,
    OfferError,
    check_keys,
    decode_address,
    decode_hex,
    decode_uint,
    offer_digest,
)

SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
SECP256K1_HALF_N = SECP256K1_N // 2
ERC1271_MAGIC = bytes.fromhex("1626ba7e")
EIP1271_GAS = 1_000_000  # bounds the work a hostile wallet contract can make our RPC node do per offer
MAX_DURATION = 365 * 24 * 3600  # JobMarket.MAX_DURATION
UINT112_MAX = 2**112 - 1  # payments and bonds are stored as uint112
# Wire bounds. EIP-1271 signatures have no fixed length (multisigs concatenate several), so a generous cap.
MAX_SIGNATURE_BYTES = 4096
MAX_PARAMS_BYTES = 64 * 1024
MAX_ENVELOPE_CHARS = 2 * (MAX_PARAMS_BYTES + MAX_SIGNATURE_BYTES) + 16 * 1024
_ENVELOPE_KEYS = frozenset({"offer", "signature", "chainId", "market"})
_ENVELOPE_OPTIONAL = frozenset({"params"})


class RejectReason(StrEnum):
    """Why an offer was refused; the values are stable identifiers for metrics and API answers."""

    MALFORMED = "malformed"
    WRONG_CHAIN = "wrong_chain"
    WRONG_CONTRACT = "wrong_contract"
    EXPIRED = "expired"
    INVALID_TERMS = "invalid_terms"  # the contract would revert on amounts, duration or a zero requester
    PARAMS_MISMATCH = "params_mismatch"
    BAD_SIGNATURE_LENGTH = "bad_signature_length"
    BAD_SIGNATURE_V = "bad_signature_v"
    MALLEABLE_SIGNATURE = "malleable_signature"
    SIGNER_MISMATCH = "signer_mismatch"
    CONTRACT_SIGNATURE_INVALID = "contract_signature_invalid"
    NONCE_USED = "nonce_used"
    ALREADY_POSTED = "already_posted"


@dataclass(frozen=True)
class Verdict:
    """The outcome of a check. ``job_id`` is the offer's digest under the domain its envelope names
    (equal to the id on this market when accepted); empty when the offer could not even be parsed."""

    ok: bool
    reason: RejectReason | None
    detail: str
    job_id: bytes

    @classmethod
    def accept(cls, job_id: bytes) -> Verdict:
        return cls(True, None, "", job_id)

    @classmethod
    def reject(cls, reason: RejectReason, detail: str, job_id: bytes = b"") -> Verdict:
        return cls(False, reason, detail, job_id)


class OfferRejected(OfferError):
    """Raised only where a value cannot be returned (parsing an envelope); carries the same reason."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail

    @property
    def verdict(self) -> Verdict:
        return Verdict.reject(self.reason, self.detail)


@dataclass(frozen=True)
class SignedOffer:
    """An offer as it travels: the offer, its signature, the domain it was signed for, and optionally the
    params blob whose hash it commits to.

    Wire form (``to_json``/``from_json``), a JSON object with exactly these keys::

        {"offer": {<JobOffer.from_json form>}, "signature": "0x<hex>", "chainId": "<decimal>",
         "market": "0x<address>", "params": "0x<hex>"}        # "params" optional; absent, not null

    Integers are canonical decimal strings and bytes are 0x-hex, as in ``JobOffer.from_json``; the signature
    is at most MAX_SIGNATURE_BYTES and params at most MAX_PARAMS_BYTES."""

    offer: JobOffer
    signature: bytes
    chain_id: int
    market: str
    params: bytes | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.offer, JobOffer):
            raise OfferRejected(RejectReason.MALFORMED, "offer: not a JobOffer")
        if not isinstance(self.signature, bytes | bytearray):
            raise OfferRejected(RejectReason.MALFORMED, "signature: must be bytes")
        object.__setattr__(self, "signature", bytes(self.signature))
        if isinstance(self.chain_id, bool) or not isinstance(self.chain_id, int) or not 0 <= self.chain_id < 2**256:
            raise OfferRejected(RejectReason.MALFORMED, "chainId: must be a uint256")
        if not isinstance(self.market, str) or not is_address(self.market):
            raise OfferRejected(RejectReason.MALFORMED, "market: not an address")
        object.__setattr__(self, "market", _checksum(self.market))
        if self.params is not None:
            if not isinstance(self.params, bytes | bytearray):
                raise OfferRejected(RejectReason.MALFORMED, "params: must be bytes")
            object.__setattr__(self, "params", bytes(self.params))

    @cached_property
    def job_id(self) -> bytes:
        """The offer's EIP-712 digest under the envelope's domain: what the signature is over."""
        return offer_digest(self.offer, self.chain_id, self.market)

    @classmethod
    def from_json(cls, obj: Any) -> SignedOffer:
        """Strict parse of the wire form: a decoded JSON object, or the JSON text itself. Anything else
        than a well-formed envelope raises OfferRejected (reason MALFORMED, detail naming the field), and
        nothing else is raised, because this is the first thing to touch a request body."""
        if isinstance(obj, str | bytes | bytearray):
            obj = _load_json(obj)
        if not isinstance(obj, dict):
            raise OfferRejected(RejectReason.MALFORMED, f"envelope: must be an object, got {type(obj).__name__}")
        try:
            check_keys(obj, _ENVELOPE_KEYS, _ENVELOPE_OPTIONAL, "envelope")
            offer = JobOffer.from_json(obj["offer"])
            signature = decode_hex(obj["signature"], "signature", max_size=MAX_SIGNATURE_BYTES)
            chain_id = decode_uint(obj["chainId"], "chainId")
            market = decode_address(obj["market"], "market")
            params = decode_hex(obj["params"], "params", max_size=MAX_PARAMS_BYTES) if "params" in obj else None
        except OfferRejected:
            raise
        except OfferError as exc:
            raise OfferRejected(RejectReason.MALFORMED, str(exc)) from None
        return cls(offer, signature, chain_id, market, params)

    def to_json(self) -> dict[str, Any]:
        """The wire form as a JSON-ready dict; ``from_json(x.to_json()) == x``."""
        out: dict[str, Any] = {"offer": self.offer.to_json(), "signature": "0x" + self.signature.hex(),
                               "chainId": str(self.chain_id), "market": self.market}
        if self.params is not None:
            out["params"] = "0x" + self.params.hex()
        return out


# A valid envelope has two '{' outside strings, and '[' '{' are not legal unescaped in a URI (bar one IPv6
# host), so this many can only be an attack; it also bounds the nesting depth json.loads will recurse to.
_MAX_OPEN_BRACKETS = 256


def _load_json(text: str | bytes | bytearray) -> Any:
    """json.loads behind a bracket count: eth-account raises the recursion limit to 100000, so the C decoder
    no longer stops a deeply nested body with RecursionError; the process dies of a stack overflow."""
    if len(text) > MAX_ENVELOPE_CHARS:
        raise OfferRejected(RejectReason.MALFORMED, f"envelope: longer than {MAX_ENVELOPE_CHARS} characters")
    opening = (b"[", b"{") if isinstance(text, bytes | bytearray) else ("[", "{")
    if text.count(opening[0]) + text.count(opening[1]) > _MAX_OPEN_BRACKETS:
        raise OfferRejected(RejectReason.MALFORMED, f"envelope: more than {_MAX_OPEN_BRACKETS} '[' or '{{'")
    try:
        if not isinstance(text, str):
            text = bytes(text).decode("utf-8")  # RFC 8259: JSON on the wire is UTF-8
        return json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise OfferRejected(RejectReason.MALFORMED, f"envelope: not JSON ({type(exc).__name__})") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


@lru_cache(maxsize=256)
def _checksum(address: str) -> str:
    return to_checksum_address(address)


def _check_terms(signed: SignedOffer, chain_id: int, market: str, now: int) -> Verdict | None:
    """Everything the contract checks that does not involve the signature or chain state."""
    offer = signed.offer
    if signed.chain_id != chain_id:
        return Verdict.reject(RejectReason.WRONG_CHAIN, f"signed for chain {signed.chain_id}, this is {chain_id}",
                              signed.job_id)
    if signed.market != _checksum(market):
        return Verdict.reject(RejectReason.WRONG_CONTRACT, f"signed for market {signed.market}, this is "
                              f"{_checksum(market)}", signed.job_id)
    if offer.expiry <= now:  # JobMarket._post: `offer.expiry <= block.timestamp` reverts
        return Verdict.reject(RejectReason.EXPIRED, f"expiry {offer.expiry} <= now {now}", signed.job_id)
    problem = _terms_problem(offer)
    if problem:
        return Verdict.reject(RejectReason.INVALID_TERMS, problem, signed.job_id)
    if signed.params is not None and keccak(signed.params) != offer.paramsHash:
        return Verdict.reject(RejectReason.PARAMS_MISMATCH, "keccak256(params) != paramsHash", signed.job_id)
    return None


def _terms_problem(offer: JobOffer) -> str:
    if offer.requester == "0x0000000000000000000000000000000000000000":
        return "requester: zero address"
    if not 0 < offer.maxDuration <= MAX_DURATION:
        return f"maxDuration: must be in 1..{MAX_DURATION}, got {offer.maxDuration}"
    if offer.payment == 0:
        return "payment: zero"
    if offer.payment > UINT112_MAX:
        return "payment: above 2^112-1"
    if offer.providerBond > UINT112_MAX:
        return "providerBond: above 2^112-1"
    return ""


def _check_ecdsa(signed: SignedOffer) -> Verdict | None:
    """OpenZeppelin ECDSA.tryRecover's rules, then the comparison that gives recovery its meaning."""
    sig = signed.signature
    if len(sig) != 65:
        return Verdict.reject(RejectReason.BAD_SIGNATURE_LENGTH, f"{len(sig)} bytes, an EOA signature is 65",
                              signed.job_id)
    v = sig[64]
    if v != 27 and v != 28:
        return Verdict.reject(RejectReason.BAD_SIGNATURE_V, f"v = {v}, must be 27 or 28", signed.job_id)
    if int.from_bytes(sig[32:64], "big") > SECP256K1_HALF_N:
        return Verdict.reject(RejectReason.MALLEABLE_SIGNATURE, "s > secp256k1n/2", signed.job_id)
    signer = recover_address(signed.job_id, sig)
    if signer is None:
        return Verdict.reject(RejectReason.SIGNER_MISMATCH, "signature recovers to no address", signed.job_id)
    if signer != bytes.fromhex(signed.offer.requester[2:]):
        return Verdict.reject(RejectReason.SIGNER_MISMATCH, f"signed by {to_checksum_address(signer)}, "
                              f"requester is {signed.offer.requester}", signed.job_id)
    return None


def recover_address(digest: bytes, signature: bytes) -> bytes | None:
    """The 20-byte address whose key made this 65-byte r||s||v signature (v 27/28) over ``digest``, or None
    where ecrecover would return zero. Calls libsecp256k1 (coincurve, eth-keys' backend) directly: the
    eth-keys object layer costs as much again as the curve arithmetic."""
    try:
        public = coincurve.PublicKey.from_signature_and_message(signature[:64] + bytes((signature[64] - 27,)),
                                                                digest, hasher=None)
    except Exception:  # r or s zero / out of range, or no point for r: ecrecover gives address(0)
        return None
    return keccak(public.format(compressed=False)[1:])[12:]


def check_offer_local(signed: SignedOffer, *, chain_id: int, market: str, now: int) -> Verdict:
    """Every check that needs no chain, assuming the requester is an EOA (where it is a contract wallet
    only ``verify_offer`` can tell, and the ECDSA verdict here does not apply). ``now`` is the timestamp
    the contract would see (the latest block's, for a claim sent now)."""
    return _check_terms(signed, chain_id, market, now) or _check_ecdsa(signed) or Verdict.accept(signed.job_id)


class OfferChainView(Protocol):
    """The chain state verification depends on; a Protocol so tests and caches can stand in for RPC."""

    async def has_code(self, address: str) -> bool: ...

    async def is_valid_signature(self, wallet: str, digest: bytes, signature: bytes) -> bool: ...

    async def nonce_used(self, requester: str, nonce: int) -> bool: ...

    async def job_exists(self, job_id: bytes) -> bool: ...


async def verify_offer(signed: SignedOffer, *, chain_id: int, market: str, now: int,
                       view: OfferChainView) -> Verdict:
    """The full verdict: local checks first (no RPC spent on an offer that fails them), then the signature
    by the rule the contract would pick for this requester, then replay. The signature is settled before
    nonce and job state so that a forged offer learns nothing about the requester's on-chain state."""
    rejection = _check_terms(signed, chain_id, market, now)
    if rejection:
        return rejection
    offer, job_id = signed.offer, signed.job_id
    if await view.has_code(offer.requester):
        if not await view.is_valid_signature(offer.requester, job_id, signed.signature):
            return Verdict.reject(RejectReason.CONTRACT_SIGNATURE_INVALID,
                                  f"EIP-1271 wallet {offer.requester} did not return 0x1626ba7e", job_id)
    else:
        rejection = _check_ecdsa(signed)
        if rejection:
            return rejection
    if await view.job_exists(job_id):  # before the nonce: a posted offer has also used its nonce
        return Verdict.reject(RejectReason.ALREADY_POSTED, f"job 0x{job_id.hex()} exists on chain", job_id)
    if await view.nonce_used(offer.requester, offer.nonce):
        return Verdict.reject(RejectReason.NONCE_USED, f"nonce {offer.nonce} of {offer.requester} is used "
                              "or invalidated", job_id)
    return Verdict.accept(job_id)


_ERC1271_ABI = [{
    "type": "function", "name": "isValidSignature", "stateMutability": "view",
    "inputs": [{"name": "hash", "type": "bytes32"}, {"name": "signature", "type": "bytes"}],
    "outputs": [{"name": "magicValue", "type": "bytes4"}],
}]
# SignatureChecker compares the whole first return word with the left-aligned selector.
_MAGIC_WORD = ERC1271_MAGIC + bytes(28)


class Web3OfferView:
    """OfferChainView over an AsyncWeb3 connection to the market's chain."""

    def __init__(self, w3: AsyncWeb3, market_address: str, *, block: BlockIdentifier = "latest") -> None:
        self._w3 = w3
        self._block = block
        self._block_param = _json_block(block)
        self._market = to_checksum_address(market_address)
        self._wallet_abi = w3.eth.contract(abi=_ERC1271_ABI)
        outputs = next(f for f in load_abi("JobMarket") if f.get("name") == "getJob")["outputs"][0]["components"]
        self._state_index = [o["name"] for o in outputs].index("state")

    async def has_code(self, address: str) -> bool:
        return len(await self._raw("eth_getCode", [to_checksum_address(address), self._block_param])) > 0

    async def is_valid_signature(self, wallet: str, digest: bytes, signature: bytes) -> bool:
        """As SignatureChecker sees it: a revert, a short answer or any other word is "invalid". The call
        runs attacker-chosen code, so CCIP-read (an HTTP fetch to a URL the contract names) is off."""
        data = self._wallet_abi.encode_abi("isValidSignature", args=[digest, signature])
        try:
            out = await self._w3.eth.call({"to": to_checksum_address(wallet), "data": data, "gas": EIP1271_GAS},
                                          self._block, ccip_read_enabled=False)
        except (ContractLogicError, Web3RPCError):
            return False
        return bytes(out[:32]) == _MAGIC_WORD

    async def nonce_used(self, requester: str, nonce: int) -> bool:
        return bool((await self._view("isNonceUsed", to_checksum_address(requester), nonce))[0])

    async def job_exists(self, job_id: bytes) -> bool:
        job = (await self._view("getJob", bytes(job_id)))[0]
        return job[self._state_index] != 0  # JobState.None

    async def _view(self, function: str, *args: Any) -> tuple[Any, ...]:
        """A market read encoded with eth-abi, not web3's contract layer: these run for every direct offer."""
        call = {"to": self._market, "data": "0x" + view_calldata("JobMarket", function, *args).hex()}
        raw = await self._raw("eth_call", [call, self._block_param])
        try:
            return view_result("JobMarket", function, raw)
        except Exception as exc:  # noqa: BLE001 - eth-abi's decoding errors: an RPC answer is untrusted
            raise Web3RPCError(f"JobMarket.{function}: undecodable answer ({len(raw)} bytes): {exc}") from None

    async def _raw(self, method: str, params: list[Any]) -> bytes:
        """One JSON-RPC request straight to the provider, past web3's middleware and formatters, which cost
        about 1.5 ms of CPU per request (the load run: direct offers were CPU-bound on these reads). The
        answer is checked here instead: a JSON-RPC error raises Web3RPCError, a result must be hex."""
        reply = await self._w3.provider.make_request(method, params)  # type: ignore[arg-type]
        if not isinstance(reply, dict):
            raise Web3RPCError(f"{method}: malformed answer: not a JSON-RPC response: {str(reply)[:60]!r}")
        if "error" in reply:
            error = reply["error"]
            message = error.get("message", error) if isinstance(error, dict) else error
            raise Web3RPCError(f"{method}: {message}", rpc_response=reply)
        result = reply.get("result")
        if isinstance(result, str) and result.startswith("0x"):
            with contextlib.suppress(ValueError):
                return bytes.fromhex(result[2:])
        raise Web3RPCError(f"{method}: malformed answer: not a hex string: {str(result)[:60]!r}", rpc_response=reply)


def _json_block(block: BlockIdentifier) -> Any:
    """A block identifier as a raw JSON-RPC parameter: a tag ("latest") as it is, a number or hash in hex."""
    if isinstance(block, int):
        return hex(block)
    if isinstance(block, bytes):
        return "0x" + bytes(block).hex()
    return block


class RpcOfferView:
    """OfferChainView through the node's RpcClient, so on-chain checks fail over like every other read."""

    def __init__(self, rpc: Any, market_address: str, *, block: BlockIdentifier = "latest") -> None:
        self._rpc = rpc
        self._views = {id(ep.w3): Web3OfferView(ep.w3, market_address, block=block) for ep in rpc.endpoints}

    async def _ask(self, what: str, ask: Any) -> Any:
        return await self._rpc.call(lambda w3: ask(self._views[id(w3)]), what)

    async def has_code(self, address: str) -> bool:
        return await self._ask("eth_getCode", lambda v: v.has_code(address))

    async def is_valid_signature(self, wallet: str, digest: bytes, signature: bytes) -> bool:
        return await self._ask("isValidSignature", lambda v: v.is_valid_signature(wallet, digest, signature))

    async def nonce_used(self, requester: str, nonce: int) -> bool:
        return await self._ask("isNonceUsed", lambda v: v.nonce_used(requester, nonce))

    async def job_exists(self, job_id: bytes) -> bool:
        return await self._ask("getJob", lambda v: v.job_exists(job_id))
