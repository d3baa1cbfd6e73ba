"""Fraud proofs for ``matmul-int8/v1``: everything a challenger or a provider hands MatmulInt8Verifier.

Why this module exists: the contract recomputes one element C[i,j] of a job's output from the job's
params and compares it with the value the provider committed to (its 4 KiB result chunk, proven against
the on-chain result root). Every byte it is given must match what it derives itself, so the params,
the input commitment, the audit position and the proofs are built here once, exactly as the contract
reads them, and the requester tools, the cheat simulation and the node's automatic reveal all share it.

Pure: no torch, no network. The only chain-facing parts are call data encoders over the exported ABI.

Conventions (the contract's, see docs/protocol.md):

- Canonical params (the bytes whose keccak256 is the offer's paramsHash), compact JSON in this order:
  ``{"m":M,"k":K,"n":N,"seed":S}`` or ``{"m":M,"k":K,"n":N,"input":"safetensors","ab_root":"0x…"}``, with
  ``,"audit":"0x…"`` before the closing brace when the requester committed to an audit secret.
- The result is C as int32 little-endian, row-major: C[i,j] lies at byte 4*(i*n+j), in 4 KiB chunk
  ``offset // 4096`` of an RFC 6962 tree over ``ceil(4*m*n / 4096)`` chunks.
- Supplied inputs are committed by ``ab_root``: an RFC 6962 root over m + n leaves, leaf r the k bytes of
  row r of A, leaf m + c the k bytes of column c of B (B[0][c], B[1][c], ...).
- Audits: the requester puts ``audit = keccak256(abi.encode(bytes32 secret))`` in the params and reveals
  the secret only after the result root is on chain; the audited element is
  ``keccak256(abi.encode(secret, resultRoot)) mod (m*n)``, which the provider cannot predict when it
  commits and the requester cannot steer after seeing the root.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from eth_utils import keccak

from node.chain.contracts import calldata
from node.chain.offers import JobOffer
from node.compute.commitment import CHUNK_SIZE, file_inclusion_proof, inclusion_proof, merkle_root_of_leaves
from node.compute.workloads.generator import TAG_A, TAG_B, element
from node.compute.workloads.matmul_int8 import input_leaf_hashes

WORKLOAD = "matmul-int8/v1"
WORKLOAD_ID = keccak(text=WORKLOAD)
VERIFIER = "MatmulInt8Verifier"  # the exported ABI's name

MAX_DIM = 65536  # as node.compute.workloads.matmul_int8 and the contract's BadDimensions
MAX_ELEMENTS = 1 << 28
MAX_PARAMS_BYTES = 4096
UINT64_MAX = (1 << 64) - 1
ZERO32 = b"\x00" * 32

#: The ``SuppliedInputs`` argument of a seed job: row, rowProof, col, colProof all empty.
EMPTY_INPUTS: tuple[bytes, list[bytes], bytes, list[bytes]] = (b"", [], b"", [])

_HEX32 = re.compile(r"0x[0-9a-f]{64}")


class FraudProofError(ValueError):
    """Params, inputs or a result file that no fraud proof can be built from; the message says why."""


@dataclass(frozen=True)
class MatmulParams:
    """The params of one matmul-int8 job, as the verifier's ``MatmulParams`` struct.

    Exactly one of ``seed`` (inputs generated from it) and ``ab_root`` (inputs supplied in the job's input
    file, committed by this root) is set. ``audit`` is the requester's audit commitment, or None.
    """

    m: int
    k: int
    n: int
    seed: int | None = None
    ab_root: bytes | None = None
    audit: bytes | None = None

    def __post_init__(self) -> None:
        for name in ("m", "k", "n"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_DIM:
                raise FraudProofError(f"{name} must be an integer in [1, {MAX_DIM}], got {value!r}")
        for label, size in (("m*k", self.m * self.k), ("k*n", self.k * self.n), ("m*n", self.m * self.n)):
            if size > MAX_ELEMENTS:
                raise FraudProofError(f"{label} = {size} exceeds {MAX_ELEMENTS}")
        if (self.seed is None) == (self.ab_root is None):
            raise FraudProofError("exactly one of seed (generated inputs) and ab_root (supplied inputs) must be set")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)
                                      or not 0 <= self.seed <= UINT64_MAX):
            raise FraudProofError(f"seed must be an integer in [0, 2^64), got {self.seed!r}")
        for name in ("ab_root", "audit"):
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, bytes | bytearray) or len(value) != 32:
                raise FraudProofError(f"{name} must be 32 bytes")
            object.__setattr__(self, name, bytes(value))
        if self.audit == ZERO32:  # the contract reads a zero audit word as "no audit commitment"
            raise FraudProofError("audit must not be zero (zero means no audit commitment)")

    @property
    def supplied(self) -> bool:
        return self.ab_root is not None

    def canonical(self) -> bytes:
        """The params bytes exactly as the contract's ``encodeParams`` writes them."""
        text = f'{{"m":{self.m},"k":{self.k},"n":{self.n}'
        if self.ab_root is not None:
            text += f',"input":"safetensors","ab_root":"0x{self.ab_root.hex()}"'
        else:
            text += f',"seed":{self.seed}'
        if self.audit is not None:
            text += f',"audit":"0x{self.audit.hex()}"'
        return (text + "}").encode()

    @property
    def params_hash(self) -> bytes:
        """keccak256 of the canonical bytes: what the offer's paramsHash must be."""
        return keccak(self.canonical())

    def as_abi(self) -> tuple[int, int, int, bool, int, bytes, bytes]:
        """The ``MatmulParams`` tuple argument: (m, k, n, supplied, seed, abRoot, audit)."""
        return (self.m, self.k, self.n, self.supplied, self.seed or 0, self.ab_root or ZERO32,
                self.audit or ZERO32)

    @classmethod
    def from_params(cls, params: bytes) -> MatmulParams:
        """The params of a job from its params bytes; FraudProofError unless they are in canonical form,
        since the contract only accepts params whose canonical encoding hashes to the offer's paramsHash."""
        if not isinstance(params, bytes | bytearray):
            raise FraudProofError("params must be bytes")
        if len(params) > MAX_PARAMS_BYTES:
            raise FraudProofError(f"params longer than {MAX_PARAMS_BYTES} bytes")
        try:
            obj = json.loads(bytes(params).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise FraudProofError(f"params are not UTF-8 JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise FraudProofError("params must be a JSON object")
        if "input" in obj and "ab_root" not in obj:
            raise FraudProofError("supplied-input params without ab_root: the inputs are not committed, so no "
                                  "element can be recomputed on chain")
        allowed = {"m", "k", "n", "audit"} | ({"input", "ab_root"} if "input" in obj else {"seed"})
        unknown = sorted(set(obj) - allowed)
        if unknown:
            raise FraudProofError(f"params have key(s) the verifier does not know: {', '.join(unknown)}")
        missing = sorted(allowed - {"audit"} - set(obj))
        if missing:
            raise FraudProofError(f"params lack key(s) {', '.join(missing)}")
        if "input" in obj and obj["input"] != "safetensors":
            raise FraudProofError('input must be "safetensors"')
        parsed = cls(m=obj["m"], k=obj["k"], n=obj["n"], seed=obj.get("seed"),
                     ab_root=_hex32(obj["ab_root"], "ab_root") if "ab_root" in obj else None,
                     audit=_hex32(obj["audit"], "audit") if "audit" in obj else None)
        if parsed.canonical() != bytes(params):
            raise FraudProofError("params are not in canonical form (compact JSON, keys in the contract's "
                                  "order, lower-case hex): the verifier would refuse them as ParamsMismatch")
        return parsed

    # -- the result layout --------------------------------------------------------------------------------

    @property
    def result_size(self) -> int:
        """Bytes of the result file: C as int32."""
        return 4 * self.m * self.n

    @property
    def chunk_count(self) -> int:
        """Leaves of the result's RFC 6962 tree."""
        return -(-self.result_size // CHUNK_SIZE)

    def check_index(self, i: int, j: int) -> None:
        if isinstance(i, bool) or isinstance(j, bool) or not (0 <= i < self.m and 0 <= j < self.n):
            raise FraudProofError(f"element ({i}, {j}) is outside C ({self.m} x {self.n})")

    def element_chunk(self, i: int, j: int) -> tuple[int, int]:
        """(chunk index, byte offset inside that chunk) of C[i,j]."""
        self.check_index(i, j)
        return divmod(4 * (i * self.n + j), CHUNK_SIZE)

    def chunk_length(self, index: int) -> int:
        """The length the contract expects of chunk ``index`` (the last one may be short)."""
        if not 0 <= index < self.chunk_count:
            raise FraudProofError(f"chunk {index} is outside a result of {self.chunk_count} chunks")
        return min(CHUNK_SIZE, self.result_size - index * CHUNK_SIZE)


def _hex32(value: Any, name: str) -> bytes:
    if not isinstance(value, str) or not _HEX32.fullmatch(value):
        raise FraudProofError(f"{name} must be 0x + 64 lower-case hex digits")
    return bytes.fromhex(value[2:])


# -- audits -------------------------------------------------------------------------------------------------


def new_audit_secret() -> bytes:
    """A fresh 32-byte audit secret (the requester keeps it until the result root is on chain)."""
    return secrets.token_bytes(32)


def audit_commitment(secret: bytes) -> bytes:
    """keccak256(abi.encode(bytes32 secret)): the ``audit`` value put in the params."""
    return keccak(_bytes32(secret, "secret"))


def audit_position(p: MatmulParams, secret: bytes, result_root: bytes) -> tuple[int, int]:
    """The (i, j) an audit with this secret picks once ``result_root`` is committed (``auditPosition``)."""
    h = int.from_bytes(keccak(_bytes32(secret, "secret") + _bytes32(result_root, "result_root")), "big")
    return divmod(h % (p.m * p.n), p.n)


def _bytes32(value: bytes, name: str) -> bytes:
    if not isinstance(value, bytes | bytearray) or len(value) != 32:
        raise FraudProofError(f"{name} must be 32 bytes")
    return bytes(value)


# -- supplied inputs ------------------------------------------------------------------------------------------


def _input_leaves(a: bytes, b: bytes, m: int, k: int, n: int) -> list[bytes]:
    """The worker's own definition (matmul_int8.input_leaf_hashes), so the node checks what the contract does."""
    try:
        return input_leaf_hashes(a, b, m, k, n)
    except ValueError as exc:
        raise FraudProofError(str(exc)) from None


def ab_root(a: bytes, b: bytes, m: int, k: int, n: int) -> bytes:
    """The input commitment of supplied A (m x k) and B (k x n), both int8 row-major raw bytes."""
    return merkle_root_of_leaves(_input_leaves(a, b, m, k, n))


Inputs = tuple[bytes, list[bytes], bytes, list[bytes]]  # the verifier's SuppliedInputs: row, rowProof, col, colProof


def supplied_inputs(a: bytes, b: bytes, p: MatmulParams, i: int, j: int) -> Inputs:
    """The ``SuppliedInputs`` argument for C[i,j]: row i of A and column j of B with their proofs against
    ``p.ab_root``. EMPTY_INPUTS for a seed job. FraudProofError when A and B are not the committed inputs."""
    p.check_index(i, j)
    if not p.supplied:
        return EMPTY_INPUTS
    leaves = _input_leaves(a, b, p.m, p.k, p.n)
    if merkle_root_of_leaves(leaves) != p.ab_root:
        raise FraudProofError("A and B do not match the job's ab_root")
    a, b = bytes(a), bytes(b)
    return (a[i * p.k:(i + 1) * p.k], inclusion_proof(leaves, i), b[j::p.n], inclusion_proof(leaves, p.m + j))


def expected_element(p: MatmulParams, i: int, j: int, inputs: Sequence[Any] = EMPTY_INPUTS) -> int:
    """C[i,j] recomputed the way the contract's ``expectedElement`` does (without checking input proofs):
    from the seed, or from the supplied row and column. O(k), for checks and tests; locating a wrong element
    in a large C belongs to the requester's tools."""
    p.check_index(i, j)
    if not p.supplied:
        return sum(element(p.seed, TAG_A, i, t, p.k) * element(p.seed, TAG_B, t, j, p.n) for t in range(p.k))
    row, col = bytes(inputs[0]), bytes(inputs[2])
    if len(row) != p.k or len(col) != p.k:
        raise FraudProofError(f"row and column must be {p.k} bytes each")
    return sum(_int8(x) * _int8(y) for x, y in zip(row, col, strict=True))


def _int8(byte: int) -> int:
    return byte - 256 if byte >= 128 else byte


# -- the committed result -------------------------------------------------------------------------------------


def committed_element(chunk: bytes, offset: int) -> int:
    """The int32 (little-endian) at ``offset`` in a result chunk."""
    if not 0 <= offset <= len(chunk) - 4:
        raise FraudProofError(f"offset {offset} is outside a chunk of {len(chunk)} bytes")
    return int.from_bytes(chunk[offset:offset + 4], "little", signed=True)


def result_chunk(result_path: str | os.PathLike[str], p: MatmulParams, i: int, j: int) -> tuple[bytes, list[bytes]]:
    """The chunk of the result file holding C[i,j] and its RFC 6962 proof (one streaming pass over the file).
    FraudProofError when the file is not the size the params imply (then no chunk of it can be proven)."""
    index, _ = p.element_chunk(i, j)
    chunk, proof = chunk_proof(result_path, index, p.result_size)
    return chunk, proof


def chunk_proof(result_path: str | os.PathLike[str], index: int, size: int | None = None) -> tuple[bytes, list[bytes]]:
    """Chunk ``index`` of a result file and its proof; with ``size``, FraudProofError unless the file has it.
    (What a provider reveals: the demand names the chunk, so the params are not needed.)"""
    actual = os.stat(result_path).st_size
    if size is not None and actual != size:
        raise FraudProofError(f"{os.fspath(result_path)} is {actual} bytes; the params imply {size}")
    chunks = -(-actual // CHUNK_SIZE)
    if not 0 <= index < chunks:
        raise FraudProofError(f"chunk {index} is outside a result of {chunks} chunks")
    chunk, proof, _ = file_inclusion_proof(result_path, index)
    return chunk, proof


# -- call data (the transaction manager and web3 both take bytes) ----------------------------------------------


def _offer(offer_abi: Any) -> Any:
    return offer_abi.as_struct() if isinstance(offer_abi, JobOffer) else offer_abi


def _inputs(inputs: Sequence[Any]) -> Inputs:
    row, row_proof, col, col_proof = inputs
    return bytes(row), [bytes(h) for h in row_proof], bytes(col), [bytes(h) for h in col_proof]


def challenge_calldata(offer_abi: Any, p: MatmulParams, i: int, j: int, inputs: Sequence[Any], chunk: bytes,
                       proof: Sequence[bytes]) -> bytes:
    """``challenge(offer, p, i, j, inputs, chunk, proof)``: proves C[i,j] wrong in one transaction."""
    return calldata(VERIFIER, "challenge", _offer(offer_abi), p.as_abi(), i, j, _inputs(inputs), bytes(chunk),
                    [bytes(h) for h in proof])


def demand_calldata(offer_abi: Any, p: MatmulParams, i: int, j: int, inputs: Sequence[Any]) -> bytes:
    """``demandReveal(offer, p, i, j, inputs)``: the provider must reveal the chunk holding C[i,j]."""
    return calldata(VERIFIER, "demandReveal", _offer(offer_abi), p.as_abi(), i, j, _inputs(inputs))


def audit_calldata(offer_abi: Any, p: MatmulParams, secret: bytes, inputs: Sequence[Any]) -> bytes:
    """``audit(offer, p, secret, inputs)``: a reveal demand at the position the secret picks."""
    return calldata(VERIFIER, "audit", _offer(offer_abi), p.as_abi(), _bytes32(secret, "secret"), _inputs(inputs))


def reveal_calldata(offer_abi: Any, chunk: bytes, proof: Sequence[bytes]) -> bytes:
    """``reveal(offer, chunk, proof)``: the provider's answer to a demand."""
    return calldata(VERIFIER, "reveal", _offer(offer_abi), bytes(chunk), [bytes(h) for h in proof])


def reveal_timeout_calldata(offer_abi: Any) -> bytes:
    """``revealTimeout(offer)``: after the deadline, an unanswered demand slashes the provider."""
    return calldata(VERIFIER, "revealTimeout", _offer(offer_abi))


__all__ = [
    "EMPTY_INPUTS", "VERIFIER", "WORKLOAD", "WORKLOAD_ID", "FraudProofError", "MatmulParams", "ab_root",
    "audit_calldata", "audit_commitment", "audit_position", "challenge_calldata", "chunk_proof",
    "committed_element", "demand_calldata", "expected_element", "new_audit_secret", "result_chunk",
    "reveal_calldata", "reveal_timeout_calldata", "supplied_inputs",
]
