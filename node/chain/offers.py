"""Job offers as EIP-712 typed data: the exact struct the JobMarket contract hashes and verifies.

The job id on chain is the offer's EIP-712 digest, so the node can compute it before the offer is posted
and re-verify any offer from its event without trusting the contract or the RPC.

The digest is hand-encoded rather than built through eth-account's generic typed-data encoder: a node
verifies every offer it hears about, and the generic path costs more than the signature recovery itself.
The typed-data form stays for wallets (``typed_data``) and is what the tests compare the fast path with.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

from eth_account import Account
from eth_keys import keys
from eth_utils import is_address, keccak, to_checksum_address

DOMAIN_NAME = "gpunode JobMarket"
DOMAIN_VERSION = "1"
UINT256_MAX = 2**256 - 1
UINT64_MAX = 2**64 - 1

OFFER_FIELDS: list[dict[str, str]] = [
    {"name": "requester", "type": "address"},
    {"name": "provider", "type": "address"},
    {"name": "workload", "type": "bytes32"},
    {"name": "paramsHash", "type": "bytes32"},
    {"name": "inputHash", "type": "bytes32"},
    {"name": "inputURI", "type": "string"},
    {"name": "payment", "type": "uint256"},
    {"name": "providerBond", "type": "uint256"},
    {"name": "maxDuration", "type": "uint64"},
    {"name": "expiry", "type": "uint64"},
    {"name": "nonce", "type": "uint256"},
]
OFFER_TYPE_STRING = "JobOffer(" + ",".join(f"{f['type']} {f['name']}" for f in OFFER_FIELDS) + ")"
OFFER_TYPEHASH = keccak(text=OFFER_TYPE_STRING)
DOMAIN_TYPE_STRING = "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
DOMAIN_TYPEHASH = keccak(text=DOMAIN_TYPE_STRING)
ZERO_ADDRESS = "0x" + "00" * 20

# Wire-form bounds: an offer arrives from anyone, so nothing in it may be unbounded.
MAX_URI_BYTES = 4096
_UINT_TEXT = re.compile(r"0|[1-9][0-9]{0,77}")  # canonical decimal, at most 78 digits (2^256 has 78)
_HEX_TEXT = re.compile(r"0x[0-9a-fA-F]*")


@lru_cache(maxsize=4096)
def _checksummed(address: str) -> str:
    """EIP-55 costs a keccak; the same few requesters and the zero provider recur in every offer."""
    return to_checksum_address(address)


class OfferError(ValueError):
    """An offer field is malformed; the message names the field."""


def workload_id(name: str) -> bytes:
    """Workload ids are keccak256 of "name/version", e.g. workload_id("matmul-int8/v1")."""
    return keccak(text=name)


@dataclass(frozen=True)
class JobOffer:
    requester: str
    provider: str
    workload: bytes
    paramsHash: bytes  # noqa: N815 - names follow the Solidity struct exactly
    inputHash: bytes  # noqa: N815
    inputURI: str  # noqa: N815
    payment: int
    providerBond: int  # noqa: N815
    maxDuration: int  # noqa: N815
    expiry: int
    nonce: int

    def __post_init__(self) -> None:
        for name in ("requester", "provider"):
            value = getattr(self, name)
            if not isinstance(value, str) or not is_address(value):
                raise OfferError(f"{name}: not an address: {value!r}")
            object.__setattr__(self, name, _checksummed(value))
        for name in ("workload", "paramsHash", "inputHash"):
            value = getattr(self, name)
            if not isinstance(value, bytes | bytearray) or len(value) != 32:
                raise OfferError(f"{name}: must be 32 bytes")
            object.__setattr__(self, name, bytes(value))
        if not isinstance(self.inputURI, str):
            raise OfferError("inputURI: must be a string")
        try:  # a lone surrogate (legal in a Python str, not in UTF-8) has no Solidity encoding
            self.inputURI.encode("utf-8")
        except UnicodeEncodeError:
            raise OfferError("inputURI: not encodable as UTF-8") from None
        limits = {"payment": UINT256_MAX, "providerBond": UINT256_MAX, "nonce": UINT256_MAX,
                  "maxDuration": UINT64_MAX, "expiry": UINT64_MAX}
        for name, hi in limits.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= hi:
                raise OfferError(f"{name}: must be an integer in 0..{hi}, got {value!r}")

    def as_struct(self) -> dict[str, Any]:
        """The offer as the dict web3 encodes for a ``JobOffer`` tuple argument."""
        return asdict(self)

    @classmethod
    def from_struct(cls, value: Any) -> JobOffer:
        """From a decoded event/call tuple (dict-like or positional)."""
        if isinstance(value, list | tuple):
            value = dict(zip([f["name"] for f in OFFER_FIELDS], value, strict=True))
        return cls(**{f["name"]: value[f["name"]] for f in OFFER_FIELDS})

    @classmethod
    def from_json(cls, obj: Any, path: str = "offer") -> JobOffer:
        """Strict parse of the wire form written by ``to_json``; raises OfferError naming the field.

        Wire form: a JSON object with exactly the struct's field names; addresses as 0x-hex (lower, upper or
        valid EIP-55 case); bytes32 as 0x + 64 hex digits; inputURI as a string of at most MAX_URI_BYTES
        UTF-8 bytes; every integer as a canonical decimal *string* (JSON numbers lose precision above 2^53
        in most clients, so they are refused rather than sometimes right)."""
        if not isinstance(obj, dict):
            raise OfferError(f"{path}: must be an object, got {type(obj).__name__}")
        check_keys(obj, _FIELD_NAMES, frozenset(), path)
        values: dict[str, Any] = {}
        for f in OFFER_FIELDS:
            name, kind, where = f["name"], f["type"], f"{path}.{f['name']}"
            value = obj[name]
            if kind == "address":
                values[name] = decode_address(value, where)
            elif kind == "bytes32":
                values[name] = decode_hex(value, where, size=32)
            elif kind == "string":
                values[name] = decode_text(value, where, MAX_URI_BYTES)
            else:
                values[name] = decode_uint(value, where, UINT64_MAX if kind == "uint64" else UINT256_MAX)
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        """The wire form (see ``from_json``) as a JSON-ready dict."""
        out: dict[str, Any] = {}
        for f in OFFER_FIELDS:
            value = getattr(self, f["name"])
            out[f["name"]] = "0x" + value.hex() if isinstance(value, bytes) else (
                str(value) if isinstance(value, int) else value)
        return out


_FIELD_NAMES = frozenset(f["name"] for f in OFFER_FIELDS)


def _shown(value: Any) -> str:
    """A short, safe rendering of untrusted input for error details (never repr of a container)."""
    if not isinstance(value, str):
        return f"<{type(value).__name__}>"
    return repr(value) if len(value) <= 40 else repr(value[:37]) + "..."


def check_keys(obj: dict[Any, Any], required: frozenset[str], optional: frozenset[str], path: str) -> None:
    """Exactly the required keys, plus any of the optional ones: a misspelt optional key is an error,
    not a silently absent value."""
    missing = sorted(required - obj.keys())
    if missing:
        raise OfferError(f"{path}: missing key(s) {', '.join(missing)}")
    extra = [k for k in obj if k not in required and k not in optional]
    if extra:
        raise OfferError(f"{path}: unexpected key(s) {', '.join(_shown(k) for k in extra[:5])}")


def decode_uint(value: Any, path: str, hi: int = UINT256_MAX) -> int:
    if not isinstance(value, str):
        raise OfferError(f"{path}: must be a decimal string, got {type(value).__name__}")
    if len(value) > 78 or not _UINT_TEXT.fullmatch(value):
        raise OfferError(f"{path}: not a canonical decimal integer: {_shown(value)}")
    number = int(value)
    if number > hi:
        raise OfferError(f"{path}: above {hi}")
    return number


def decode_hex(value: Any, path: str, *, size: int | None = None, max_size: int | None = None) -> bytes:
    if not isinstance(value, str):
        raise OfferError(f"{path}: must be a 0x-hex string, got {type(value).__name__}")
    limit = size if size is not None else max_size
    if limit is not None and len(value) > 2 + 2 * limit:
        raise OfferError(f"{path}: longer than {limit} bytes")
    if not _HEX_TEXT.fullmatch(value) or len(value) % 2:
        raise OfferError(f"{path}: not 0x-prefixed hex with whole bytes: {_shown(value)}")
    raw = bytes.fromhex(value[2:])
    if size is not None and len(raw) != size:
        raise OfferError(f"{path}: must be {size} bytes, got {len(raw)}")
    return raw


def decode_address(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise OfferError(f"{path}: must be a 0x-hex address string, got {type(value).__name__}")
    if len(value) != 42 or not _HEX_TEXT.fullmatch(value):
        raise OfferError(f"{path}: not a 20-byte 0x-hex address: {_shown(value)}")
    checksummed = _checksummed(value)
    body = value[2:]
    if body != body.lower() and body != body.upper() and value != checksummed:  # mixed case is a checksum claim
        raise OfferError(f"{path}: bad EIP-55 checksum: {value}")
    return checksummed


def decode_text(value: Any, path: str, max_bytes: int) -> str:
    if not isinstance(value, str):
        raise OfferError(f"{path}: must be a string, got {type(value).__name__}")
    if len(value) > max_bytes:
        raise OfferError(f"{path}: longer than {max_bytes} bytes")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise OfferError(f"{path}: not encodable as UTF-8 (lone surrogate)") from None
    if size > max_bytes:
        raise OfferError(f"{path}: longer than {max_bytes} bytes")
    return value


def typed_data(offer: JobOffer, chain_id: int, market: str) -> dict[str, Any]:
    """The full EIP-712 message, as wallets (eth_signTypedData_v4) and eth-account take it."""
    return {
        "types": {
            "EIP712Domain": [
                {"name": "name", "type": "string"},
                {"name": "version", "type": "string"},
                {"name": "chainId", "type": "uint256"},
                {"name": "verifyingContract", "type": "address"},
            ],
            "JobOffer": OFFER_FIELDS,
        },
        "primaryType": "JobOffer",
        "domain": {
            "name": DOMAIN_NAME,
            "version": DOMAIN_VERSION,
            "chainId": chain_id,
            "verifyingContract": to_checksum_address(market),
        },
        "message": offer.as_struct(),
    }


def _address_word(value: str) -> bytes:
    return bytes(12) + bytes.fromhex(value[2:])


def _uint_word(value: int) -> bytes:
    return value.to_bytes(32, "big")


def _bytes32_word(value: bytes) -> bytes:
    return value


def _string_word(value: str) -> bytes:
    return keccak(value.encode("utf-8"))


_WORD_ENCODERS: dict[str, Callable[[Any], bytes]] = {
    "address": _address_word, "bytes32": _bytes32_word, "string": _string_word,
    "uint256": _uint_word, "uint64": _uint_word,
}
# Derived from OFFER_FIELDS, so a field added there without an encoder fails at import, not at runtime.
_FIELD_ENCODERS: tuple[tuple[str, Callable[[Any], bytes]], ...] = tuple(
    (f["name"], _WORD_ENCODERS[f["type"]]) for f in OFFER_FIELDS
)


@lru_cache(maxsize=64)
def domain_separator(chain_id: int, market: str) -> bytes:
    """The market's EIP-712 domain separator (the contract's ``domainSeparator()``); cached because a node
    sees one or two markets and every digest needs it."""
    if isinstance(chain_id, bool) or not isinstance(chain_id, int) or not 0 <= chain_id <= UINT256_MAX:
        raise OfferError(f"chain_id: must be an integer in 0..{UINT256_MAX}, got {chain_id!r}")
    if not isinstance(market, str) or not is_address(market):
        raise OfferError(f"market: not an address: {market!r}")
    return keccak(DOMAIN_TYPEHASH + keccak(text=DOMAIN_NAME) + keccak(text=DOMAIN_VERSION)
                  + _uint_word(chain_id) + _address_word(market))


def struct_hash(offer: JobOffer) -> bytes:
    """EIP-712 ``hashStruct`` of the offer, word by word as the contract's ``hashOffer`` encodes it."""
    return keccak(OFFER_TYPEHASH + b"".join(encode(getattr(offer, name)) for name, encode in _FIELD_ENCODERS))


def offer_digest(offer: JobOffer, chain_id: int, market: str) -> bytes:
    """The EIP-712 digest of the offer, which is also its job id on chain."""
    return keccak(b"\x19\x01" + domain_separator(chain_id, market) + struct_hash(offer))


def sign_offer(offer: JobOffer, private_key: bytes | str, chain_id: int, market: str) -> bytes:
    """65-byte r||s||v signature over the offer's digest, as SignatureChecker expects. Byte-identical to
    a wallet's eth_signTypedData_v4 over ``typed_data`` (RFC 6979 nonces are deterministic)."""
    signed = Account.unsafe_sign_hash(offer_digest(offer, chain_id, market), private_key)
    return bytes(signed.signature)


def recover_signer(offer: JobOffer, signature: bytes, chain_id: int, market: str) -> str:
    """The EOA that signed the offer (contract-wallet signatures need an on-chain EIP-1271 call instead).
    Only a comparison with ``offer.requester`` means anything: any 65 bytes recover to *some* address."""
    if len(signature) != 65:
        raise OfferError(f"signature: must be 65 bytes, got {len(signature)}")
    v = signature[64] - 27 if signature[64] >= 27 else signature[64]
    sig = keys.Signature(vrs=(v, int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:64], "big")))
    return sig.recover_public_key_from_msg_hash(offer_digest(offer, chain_id, market)).to_checksum_address()
