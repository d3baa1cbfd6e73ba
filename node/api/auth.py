"""Signed result requests: only a job's requester may download its result, without accounts or API keys.

The requester already has an Ethereum key (it signed the offer and paid the escrow), so a result request is
an EIP-191 ``personal_sign`` over a short text naming the chain, this node's provider address, the job and
the current time. Naming the provider and the chain means a signature sent to one node cannot be replayed
against another node or network; the time bounds how long a leaked signature is useful, and the in-memory
``ReplayCache`` makes each signature good for one download only within that window. The text is plain and
human-readable on purpose, so a wallet can show the user what they are signing.

The checks raise ``AuthError`` carrying the HTTP status the API answers with: 401 when the request is not
authenticated at all (headers missing or malformed, time outside the window), 403 when it is authenticated
but not allowed (another signer, a replayed signature).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from eth_account import Account
from eth_account.messages import encode_defunct
from eth_utils import to_checksum_address

TIMESTAMP_HEADER = "X-Gpunode-Timestamp"
SIGNATURE_HEADER = "X-Gpunode-Signature"

# secp256k1 group order: signatures with s in the upper half are the malleated twin of a lower-half one
# (same signer, different bytes); refusing them keeps "one signature, one download" true.
_SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_SIGNATURE = re.compile(r"(?:0x)?([0-9a-fA-F]{130})")
_JOB_ID = re.compile(r"0x[0-9a-fA-F]{64}")


class AuthError(Exception):
    """A refused result request; ``status`` and ``code`` become the HTTP answer."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        self.status, self.code, self.detail = status, code, detail
        super().__init__(detail)


def result_request_message(job_id: str, provider: str, chain_id: int, timestamp: int) -> str:
    """The exact text a requester signs to fetch a result (shared by the node and every client)."""
    if not isinstance(job_id, str) or not _JOB_ID.fullmatch(job_id):
        raise ValueError(f"job id must be 0x followed by 64 hex digits, got {job_id!r}")
    return (f"gpunode result request\nchain: {int(chain_id)}\nprovider: {to_checksum_address(provider)}\n"
            f"job: {job_id.lower()}\ntime: {int(timestamp)}")


def sign_result_request(key_or_account: Any, job_id: str, provider: str, chain_id: int,
                        timestamp: int | None = None) -> dict[str, str]:
    """The headers a requester sends with ``GET /results/{job_id}``: its key signs the request text.

    ``key_or_account`` is a private key (hex or bytes) or an eth_account LocalAccount; ``timestamp``
    defaults to now. Sign afresh for each download: the node accepts each signature once.
    """
    account = key_or_account if hasattr(key_or_account, "sign_message") else Account.from_key(key_or_account)
    ts = int(time.time()) if timestamp is None else int(timestamp)
    signed = account.sign_message(encode_defunct(text=result_request_message(job_id, provider, chain_id, ts)))
    return {TIMESTAMP_HEADER: str(ts), SIGNATURE_HEADER: "0x" + bytes(signed.signature).hex()}


@dataclass(frozen=True)
class SignedRequest:
    timestamp: int
    signature: bytes  # 65 bytes: r || s || v, s in the lower half


def parse_request(headers: Mapping[str, str], *, now: float, window_s: int) -> SignedRequest:
    """Reads and checks the two headers (presence, format, time window); raises AuthError(401)."""
    raw_ts = headers.get(TIMESTAMP_HEADER)
    raw_sig = headers.get(SIGNATURE_HEADER)
    missing = [name for name, value in ((TIMESTAMP_HEADER, raw_ts), (SIGNATURE_HEADER, raw_sig)) if not value]
    if missing:
        raise AuthError(401, "unauthenticated",
                        f"missing {' and '.join(missing)}: sign the request with the job's requester key "
                        "(see node.api.auth.sign_result_request)")
    assert raw_ts is not None and raw_sig is not None
    if not _TIMESTAMP.fullmatch(raw_ts.strip()):
        raise AuthError(401, "bad_timestamp", f"{TIMESTAMP_HEADER} must be a unix time in whole seconds")
    ts = int(raw_ts.strip())
    if abs(now - ts) > window_s:
        raise AuthError(401, "stale_timestamp",
                        f"{TIMESTAMP_HEADER} {ts} is {int(abs(now - ts))} s away from the node's clock; "
                        f"the limit is {window_s} s: sign again with the current time")
    match = _SIGNATURE.fullmatch(raw_sig.strip())
    if not match:
        raise AuthError(401, "bad_signature", f"{SIGNATURE_HEADER} must be 0x followed by 65 bytes of hex")
    sig = bytes.fromhex(match.group(1))
    if int.from_bytes(sig[32:64], "big") > _SECP256K1_N // 2:
        raise AuthError(401, "bad_signature", "signature s value is in the upper half (non-canonical signature)")
    return SignedRequest(ts, sig)


def recover_signer(request: SignedRequest, job_id: str, provider: str, chain_id: int) -> str:
    """The address that signed the request text for this job; AuthError(401) if none can be recovered."""
    message = encode_defunct(text=result_request_message(job_id, provider, chain_id, request.timestamp))
    try:
        return Account.recover_message(message, signature=request.signature)
    except Exception as exc:  # eth_keys raises several types for junk signatures (BadSignature, ValueError)
        detail = f"cannot recover a signer from the signature ({type(exc).__name__})"
        raise AuthError(401, "bad_signature", detail) from None


def check_signer(signer: str, requester: str) -> None:
    if signer.lower() != requester.lower():
        raise AuthError(403, "wrong_signer",
                        f"signed by {signer}, but only the job's requester may fetch its result")


class ReplayCache:
    """Signatures already used for a download, kept until their timestamp leaves the window.

    After that the time check refuses them anyway, so the cache never holds more than one window's worth
    of successful downloads. Keyed by r || s (v adds nothing once s is canonical). Thread-safe.
    """

    def __init__(self, window_s: int, clock: Callable[[], float] = time.time) -> None:
        self.window_s = window_s
        self._clock = clock
        self._used: dict[bytes, float] = {}  # r||s -> when the entry may be dropped
        self._lock = threading.Lock()

    def use(self, request: SignedRequest) -> bool:
        """Marks the signature used; False if it already was (a replay)."""
        key = request.signature[:64]
        now = self._clock()
        with self._lock:
            self._prune(now)
            if key in self._used:
                return False
            self._used[key] = request.timestamp + self.window_s
            return True

    def _prune(self, now: float) -> None:
        expired = [k for k, until in self._used.items() if until < now]
        for k in expired:
            del self._used[k]

    def __len__(self) -> int:
        with self._lock:
            self._prune(self._clock())
            return len(self._used)


__all__ = ["SIGNATURE_HEADER", "TIMESTAMP_HEADER", "AuthError", "ReplayCache", "SignedRequest", "check_signer",
           "parse_request", "recover_signer", "result_request_message", "sign_result_request"]
