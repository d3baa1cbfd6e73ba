"""A mediator's ruling: the EIP-712 message MediatorSet.resolve verifies, and the JSON file it travels in.

The digest is ``keccak256(0x1901 || domainSeparator || keccak256(RULING_TYPEHASH || jobId || providerWasRight))``
with the domain ``("gpunode MediatorSet", "1", chainId, mediatorSet)``, exactly as the contract's
``rulingDigest``; it is hand-encoded (like node.chain.offers) and also offered as typed data for wallets.
Signing goes through the ``Signer`` (typed data), and the result is checked against the hand-encoded digest,
so a mismatch between the two encodings fails here rather than on chain.

Signatures are recovered by the contract's rules (OpenZeppelin ECDSA.recover): 65 bytes r||s||v, v 27 or 28,
s in the lower half of the curve order; anything else is refused off chain too, so a ruling file that passes
here also passes on chain. The chain id, the MediatorSet address and the job id are all inside the digest,
so a ruling cannot be replayed on another job, set or chain; there is no nonce because a job is disputed,
and so resolved, at most once.

A ruling file records who signed what, and why (``reason`` and the verification report as ``evidence``), so
the people collecting signatures can read the grounds; only the four signed fields count on chain. Loading
one recovers its signer from the signature and refuses a file whose stated signer differs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from eth_keys import keys
from eth_keys.exceptions import BadSignature
from eth_utils import is_address, keccak, to_checksum_address

from node.chain.keys import Signer
from node.chain.offers import DOMAIN_TYPEHASH, UINT256_MAX

DOMAIN_NAME = "gpunode MediatorSet"
DOMAIN_VERSION = "1"
RULING_FIELDS = [{"name": "jobId", "type": "bytes32"}, {"name": "providerWasRight", "type": "bool"}]
RULING_TYPE_STRING = "Ruling(bytes32 jobId,bool providerWasRight)"
RULING_TYPEHASH = keccak(text=RULING_TYPE_STRING)
FORMAT = "gpunode.ruling/v1"
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_HEX32 = re.compile(r"0x[0-9a-fA-F]{64}")
_HEX65 = re.compile(r"0x[0-9a-fA-F]{130}")
MAX_REASON_CHARS = 2000


class RulingError(ValueError):
    """A ruling (or a set of them) is malformed, mis-signed, or not enough to resolve; the message says which."""


def _address(value: Any, what: str) -> str:
    if not isinstance(value, str) or not is_address(value) or not value.startswith("0x"):
        raise RulingError(f"{what}: not an address: {value!r}")
    return to_checksum_address(value)


def _job_id(value: Any) -> bytes:
    if isinstance(value, bytes | bytearray) and len(value) == 32:
        return bytes(value)
    if isinstance(value, str) and _HEX32.fullmatch(value):
        return bytes.fromhex(value[2:])
    raise RulingError(f"job id: must be 32 bytes (0x and 64 hex digits), got {value!r}")


def _chain_id(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= UINT256_MAX:
        raise RulingError(f"chain id: must be a positive integer, got {value!r}")
    return value


def domain_separator(chain_id: int, mediator_set: str) -> bytes:
    """The MediatorSet's EIP-712 domain separator."""
    set_word = bytes(12) + bytes.fromhex(_address(mediator_set, "mediator set")[2:])
    return keccak(DOMAIN_TYPEHASH + keccak(text=DOMAIN_NAME) + keccak(text=DOMAIN_VERSION)
                  + _chain_id(chain_id).to_bytes(32, "big") + set_word)


def ruling_digest(chain_id: int, mediator_set: str, job_id: bytes | str, provider_was_right: bool) -> bytes:
    """What the mediators sign: the contract's ``rulingDigest(jobId, providerWasRight)``."""
    if not isinstance(provider_was_right, bool):
        raise RulingError(f"providerWasRight must be a bool, got {provider_was_right!r}")
    struct = keccak(RULING_TYPEHASH + _job_id(job_id) + int(provider_was_right).to_bytes(32, "big"))
    return keccak(b"\x19\x01" + domain_separator(chain_id, mediator_set) + struct)


def typed_data(chain_id: int, mediator_set: str, job_id: bytes | str, provider_was_right: bool) -> dict[str, Any]:
    """The full EIP-712 message (eth_signTypedData_v4 layout), for wallets and hardware keys."""
    return {
        "types": {
            "EIP712Domain": [{"name": "name", "type": "string"}, {"name": "version", "type": "string"},
                             {"name": "chainId", "type": "uint256"}, {"name": "verifyingContract", "type": "address"}],
            "Ruling": RULING_FIELDS,
        },
        "primaryType": "Ruling",
        "domain": {"name": DOMAIN_NAME, "version": DOMAIN_VERSION, "chainId": _chain_id(chain_id),
                   "verifyingContract": _address(mediator_set, "mediator set")},
        "message": {"jobId": _job_id(job_id), "providerWasRight": bool(provider_was_right)},
    }


def recover_signer(digest: bytes, signature: bytes) -> str:
    """The address that signed ``digest``, under OpenZeppelin ECDSA.recover's rules (see the module docstring)."""
    if len(signature) != 65:
        raise RulingError(f"signature: must be 65 bytes, got {len(signature)}")
    r, s, v = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:64], "big"), signature[64]
    if v not in (27, 28):
        raise RulingError(f"signature: v must be 27 or 28, got {v}")
    if s > SECP256K1_N // 2:
        raise RulingError("signature: s is in the upper half of the curve order (malleable form, refused on chain)")
    try:
        key = keys.Signature(vrs=(v - 27, r, s)).recover_public_key_from_msg_hash(digest)
    except (BadSignature, ValueError) as exc:
        raise RulingError(f"signature: does not recover to any key ({exc})") from None
    return key.to_checksum_address()


@dataclass(frozen=True)
class Ruling:
    """One mediator's signed verdict on one disputed job, with the grounds it gave."""

    chain_id: int
    mediator_set: str
    job_id: bytes
    provider_was_right: bool
    signer: str
    signature: bytes
    reason: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)
    signed_at: int = 0

    @property
    def digest(self) -> bytes:
        return ruling_digest(self.chain_id, self.mediator_set, self.job_id, self.provider_was_right)

    @property
    def job_hex(self) -> str:
        return "0x" + self.job_id.hex()

    @classmethod
    def sign(cls, signer: Signer, chain_id: int, mediator_set: str, job_id: bytes | str, provider_was_right: bool,
             *, reason: str = "", evidence: dict[str, Any] | None = None, signed_at: int = 0) -> Ruling:
        """Signs as typed data through the Signer and checks the signature against the hand-encoded digest."""
        message = typed_data(chain_id, mediator_set, job_id, provider_was_right)
        signature = bytes(signer.sign_typed_data(full_message=message).signature)
        digest = ruling_digest(chain_id, mediator_set, job_id, provider_was_right)
        if recover_signer(digest, signature) != signer.address:  # the two encodings disagree: a bug, never sent
            raise RulingError("the typed-data signature does not match the Ruling digest")
        return cls(_chain_id(chain_id), _address(mediator_set, "mediator set"), _job_id(job_id), provider_was_right,
                   signer.address, signature, reason[:MAX_REASON_CHARS], dict(evidence or {}), signed_at)

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "chain_id": self.chain_id, "mediator_set": self.mediator_set,
                "job_id": self.job_hex, "provider_was_right": self.provider_was_right, "signer": self.signer,
                "signature": "0x" + self.signature.hex(), "digest": "0x" + self.digest.hex(),
                "reason": self.reason, "signed_at": self.signed_at, "evidence": self.evidence}

    @classmethod
    def from_json(cls, obj: Any, where: str = "ruling") -> Ruling:
        """Strict: the format tag, every signed field, and a signature that recovers to the stated signer
        (the file's ``digest`` is recomputed, never trusted)."""
        try:
            return cls._from_json(obj)
        except RulingError as exc:
            raise RulingError(f"{where}: {exc}") from None

    @classmethod
    def _from_json(cls, obj: Any) -> Ruling:
        if not isinstance(obj, dict) or obj.get("format") != FORMAT:
            raise RulingError(f"not a ruling file (format must be {FORMAT!r})")
        verdict, signature = obj.get("provider_was_right"), obj.get("signature")
        if not isinstance(verdict, bool):
            raise RulingError(f"provider_was_right must be true or false, got {verdict!r}")
        if not isinstance(signature, str) or not _HEX65.fullmatch(signature):
            raise RulingError("signature: must be 0x and 130 hex digits (65 bytes)")
        reason, evidence, signed_at = obj.get("reason", ""), obj.get("evidence", {}), obj.get("signed_at", 0)
        if not isinstance(reason, str) or not isinstance(evidence, dict) or isinstance(signed_at, bool) \
                or not isinstance(signed_at, int):
            raise RulingError("reason must be text, evidence an object, signed_at an integer")
        ruling = cls(_chain_id(obj.get("chain_id")), _address(obj.get("mediator_set"), "mediator_set"),
                     _job_id(obj.get("job_id")), verdict, _address(obj.get("signer"), "signer"),
                     bytes.fromhex(signature[2:]), reason[:MAX_REASON_CHARS], evidence, signed_at)
        actual = recover_signer(ruling.digest, ruling.signature)
        if actual != ruling.signer:
            raise RulingError(f"the signature is by {actual}, not by the stated signer {ruling.signer}")
        return ruling


@dataclass(frozen=True)
class Decision:
    """What ``collect`` found: the verdict to send, its signatures in the contract's order, and the rest."""

    provider_was_right: bool
    signers: list[str]
    signatures: list[bytes]
    ignored: list[str]  # "0x… : why", for rulings that cannot count


def collect(rulings: Iterable[Ruling], *, mediators: Iterable[str], threshold: int) -> Decision:
    """Picks the verdict that at least ``threshold`` current mediators signed and orders its signatures
    strictly ascending by signer, as MediatorSet.resolve requires. All rulings must be for one job, set and
    chain. A mediator that signed both verdicts is refused outright (equivocation is worth showing, not
    resolving around); rulings by non-mediators are set aside in ``ignored``, because one would make the
    whole call revert."""
    rulings = list(rulings)
    if not rulings:
        raise RulingError("no rulings given")
    scopes = {(r.chain_id, r.mediator_set, r.job_id) for r in rulings}
    if len(scopes) != 1:
        raise RulingError("the rulings are for different jobs, mediator sets or chains: "
                          + "; ".join(f"chain {c} set {s} job 0x{j.hex()}" for c, s, j in sorted(scopes)))
    current = {to_checksum_address(m) for m in mediators}
    votes: dict[str, Ruling] = {}
    ignored: list[str] = []
    for r in rulings:
        if r.signer not in current:
            ignored.append(f"{r.signer}: not a current mediator of {r.mediator_set}")
            continue
        seen = votes.get(r.signer)
        if seen is not None and seen.provider_was_right != r.provider_was_right:
            raise RulingError(f"mediator {r.signer} signed both verdicts for job {r.job_hex}")
        votes[r.signer] = r
    sides = {v: sorted((r for r in votes.values() if r.provider_was_right == v), key=lambda r: int(r.signer, 16))
             for v in (True, False)}
    winners = [v for v, side in sides.items() if len(side) >= threshold]
    tally = f"{len(sides[True])} say the provider was right, {len(sides[False])} wrong; {threshold} needed"
    if len(winners) != 1:
        raise RulingError(("both verdicts reach the threshold: " if winners else "not enough signatures: ") + tally)
    side = sides[winners[0]]
    return Decision(winners[0], [r.signer for r in side], [r.signature for r in side], ignored)
