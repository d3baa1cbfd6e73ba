"""Job offers as EIP-712 typed data: the exact struct the JobMarket contract hashes and verifies.

The job id on chain is the offer's EIP-712 digest, so the node can compute it before the offer is posted
and re-verify any offer from its event without trusting the contract or the RPC.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from eth_account import Account
from eth_account.messages import _hash_eip191_message, encode_typed_data
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
ZERO_ADDRESS = "0x" + "00" * 20


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
            object.__setattr__(self, name, to_checksum_address(value))
        for name in ("workload", "paramsHash", "inputHash"):
            value = getattr(self, name)
            if not isinstance(value, bytes | bytearray) or len(value) != 32:
                raise OfferError(f"{name}: must be 32 bytes")
            object.__setattr__(self, name, bytes(value))
        if not isinstance(self.inputURI, str):
            raise OfferError("inputURI: must be a string")
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


def offer_digest(offer: JobOffer, chain_id: int, market: str) -> bytes:
    """The EIP-712 digest of the offer, which is also its job id on chain."""
    return _hash_eip191_message(encode_typed_data(full_message=typed_data(offer, chain_id, market)))


def sign_offer(offer: JobOffer, private_key: bytes | str, chain_id: int, market: str) -> bytes:
    """65-byte r||s||v signature over the offer's digest, as SignatureChecker expects."""
    signed = Account.sign_typed_data(private_key, full_message=typed_data(offer, chain_id, market))
    return bytes(signed.signature)


def recover_signer(offer: JobOffer, signature: bytes, chain_id: int, market: str) -> str:
    """The EOA that signed the offer (contract-wallet signatures need an on-chain EIP-1271 call instead)."""
    message = encode_typed_data(full_message=typed_data(offer, chain_id, market))
    return Account.recover_message(message, signature=signature)
