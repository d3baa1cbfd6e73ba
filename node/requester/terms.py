"""What a requester may ask for, checked before anything is signed, and the params the workloads take.

The contract and the provider's node both refuse a bad offer, but only after it was signed, paid for or
sent; checking the same rules here turns those into one clear line before any of that. The params builders
are the command line's conveniences (``--m --k --n --seed``, an input file's own shapes) as library
functions, so scripts build exactly the params the CLI would.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from node.chain.verify import MAX_DURATION, UINT112_MAX
from node.compute import workloads
from node.requester.errors import RequesterError

MATMUL = "matmul-int8/v1"
TORCH_EXPORT = "torch-export/v1"


def file_sha256(path: Path) -> bytes:
    """The input hash an offer commits to (node.compute.inputs checks the download against it)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").digest()


def needs_input(workload: str, params: dict[str, Any]) -> bool:
    """Whether the workload reads a job input file (the matmul seed form generates its matrices)."""
    return workload != MATMUL or "input" in params


def check_terms(workload: str, params: bytes, *, payment: int, bond: int, max_duration: int, expires_in: int,
                input_path: Path | None, input_uri: str) -> workloads.Workload:
    """The workload (by name or id), after checking the params and terms the way the node and the contract
    would; raises RequesterError naming the problem."""
    try:
        kind = workloads.get(workload)
    except KeyError:
        known = ", ".join(w.name for w in workloads.all_workloads())
        raise RequesterError(f"unknown workload {workload!r}; known: {known}") from None
    try:
        parsed = kind.validate_params(params)
    except workloads.ParamsError as exc:
        raise RequesterError(f"params for {kind.name}: {exc.reason}") from None
    if needs_input(kind.name, parsed) and input_path is None:
        raise RequesterError(f"{kind.name} with these params reads an input file", "pass --input FILE")
    if not needs_input(kind.name, parsed) and input_path is not None:
        raise RequesterError(f"the seed form of {MATMUL} generates its matrices: it takes no input file")
    if input_path is not None and not input_path.is_file():
        raise RequesterError(f"no input file {input_path}")
    if input_path is not None and not input_uri:
        raise RequesterError("an input file needs a URL the provider can download it from",
                             "pass --input-uri URL, or --serve with `run`")
    if input_uri and input_path is None:
        raise RequesterError("an input URI needs the file itself: the offer commits to its SHA-256",
                             "pass --input FILE too")
    if not 0 < payment <= UINT112_MAX or not 0 <= bond <= UINT112_MAX:
        raise RequesterError("the payment must be above 0, and payment and bond below 2^112 base units")
    if not 0 < max_duration <= MAX_DURATION:
        raise RequesterError(f"the duration must be 1 to {MAX_DURATION} seconds, got {max_duration}")
    if expires_in < 1:
        raise RequesterError(f"the offer must stay open at least 1 second, got {expires_in}")
    return kind


def encode_params(params: dict[str, Any]) -> bytes:
    """Compact JSON, the form the offer's paramsHash is taken over."""
    return json.dumps(params, separators=(",", ":")).encode()


def matmul_params(*, m: int | None = None, k: int | None = None, n: int | None = None, seed: int | None = None,
                  input_path: Path | None = None) -> bytes:
    """matmul-int8/v1 params: the seed form, or the input form with m, k, n read from the file's A and B
    where not given."""
    dims = {"m": m, "k": k, "n": n}
    if seed is None and input_path is not None:
        for key, value in matrix_shapes(input_path).items():
            dims[key] = value if dims[key] is None else dims[key]
        return encode_params({**dims, "input": "safetensors"})
    if seed is None or None in dims.values():
        raise RequesterError(f"{MATMUL} needs m, k, n and a seed (or an input file with matrices A and B)",
                             "pass --m, --k, --n and --seed, or --input FILE")
    return encode_params({**dims, "seed": seed})


def canonical_matmul(params: bytes, input_path: Path | None) -> tuple[bytes, bytes | None]:
    """matmul-int8/v1 params as the offer must carry them for a fraud proof, and the audit secret.

    The verifier contract accepts only params whose canonical encoding (node.chain.fraud.MatmulParams)
    hashes to the offer's paramsHash, so any spelling of the params is rewritten into that form here,
    before signing. An input-form job gets ``ab_root``, the commitment to A's rows and B's columns that
    lets the contract recompute an element from one row and one column; it is computed from the input
    file (an ``ab_root`` already given must equal it). A fresh audit secret is drawn and its commitment
    added, unless the params already carry an ``audit`` (then the secret is not ours: None is returned
    and ``request audit`` cannot be used for the job). ``params`` must already have passed check_terms."""
    from node.chain.fraud import FraudProofError, MatmulParams, ab_root, audit_commitment, new_audit_secret

    given = workloads.parse_params_json(params)
    m, k, n = given["m"], given["k"], given["n"]
    root = None
    if "input" in given:
        if input_path is None:
            raise RequesterError(f"{MATMUL} with these params reads an input file", "pass --input FILE")
        root = ab_root(*input_matrices(input_path, m, k, n), m, k, n)
        if "ab_root" in given and given["ab_root"] != "0x" + root.hex():
            raise RequesterError(f"the params' ab_root {given['ab_root']} is not the commitment of {input_path} "
                                 f"(0x{root.hex()})", "leave ab_root out: it is computed from the file")
    secret = None if "audit" in given else new_audit_secret()
    try:
        audit = bytes.fromhex(given["audit"][2:]) if secret is None else audit_commitment(secret)
        canonical = MatmulParams(m, k, n, seed=given.get("seed"), ab_root=root, audit=audit).canonical()
    except (FraudProofError, ValueError, TypeError) as exc:
        raise RequesterError(f"params for {MATMUL}: {exc}") from None
    return canonical, secret


def input_matrices(path: Path, m: int, k: int, n: int) -> tuple[bytes, bytes]:
    """A and B of a matmul input file as raw int8 bytes, row-major (what ab_root and the supplied-input
    proofs are built from); RequesterError unless they are int8 of shapes (m, k) and (k, n)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="np") as f:
            a, b = f.get_tensor("A"), f.get_tensor("B")
    except Exception as exc:  # not safetensors, or no A/B: safetensors raises several types
        raise RequesterError(f"{path} is not a matmul input (safetensors with int8 tensors A and B): "
                             f"{type(exc).__name__}") from None
    for name, tensor, shape in (("A", a, (m, k)), ("B", b, (k, n))):
        if str(tensor.dtype) != "int8" or tuple(tensor.shape) != shape:
            raise RequesterError(f"{path}: {name} is {tuple(tensor.shape)} {tensor.dtype}; the job needs "
                                 f"{shape} int8")
    return a.tobytes(order="C"), b.tobytes(order="C")


def torch_export_params(inputs: list[str] | None, bundle: Path | None) -> bytes:
    """torch-export/v1 params; without ``inputs``, the bundle's input tensor when it has exactly one (with
    several, the order the program takes them in is not in the file, so it must be given)."""
    if inputs is None and bundle is not None:
        from safetensors import safe_open

        try:
            with safe_open(str(bundle), framework="pt") as f:
                plain = [name for name in f.keys() if "/" not in name]  # noqa: SIM118 - not a dict
        except Exception as exc:  # safetensors raises several types for a file that is not one
            raise RequesterError(f"{bundle} is not a torch-export bundle (safetensors): {type(exc).__name__}") \
                from None
        inputs = plain if len(plain) == 1 else None
    if not inputs:
        raise RequesterError(f"{TORCH_EXPORT} needs the names of the bundle's input tensors, in the order the "
                             "program takes them", "pass --inputs x0,x1")
    return encode_params({"inputs": [name.strip() for name in inputs]})


def matrix_shapes(path: Path) -> dict[str, int]:
    """m, k, n of a matmul input file, from its safetensors header (no tensor is read)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            a, b = f.get_slice("A").get_shape(), f.get_slice("B").get_shape()
    except Exception as exc:  # not safetensors, or no A/B
        raise RequesterError(f"{path} is not a matmul input (safetensors with int8 tensors A and B): "
                             f"{type(exc).__name__}") from None
    if len(a) != 2 or len(b) != 2 or a[1] != b[0]:
        raise RequesterError(f"{path}: A is {a} and B is {b}; they must be (m, k) and (k, n)")
    return {"m": a[0], "k": a[1], "n": b[1]}


def permit_typed_data(domain: tuple, owner: str, spender: str, value: int, nonce: int,
                      deadline: int) -> dict[str, Any]:
    """The EIP-2612 Permit message for eth_signTypedData; ``domain`` is the token's ERC-5267
    ``eip712Domain()`` answer, so the name and version are the ones the token itself hashes."""
    _, name, version, chain_id, verifying, _, _ = domain
    return {
        "types": {
            "EIP712Domain": [{"name": "name", "type": "string"}, {"name": "version", "type": "string"},
                             {"name": "chainId", "type": "uint256"}, {"name": "verifyingContract", "type": "address"}],
            "Permit": [{"name": "owner", "type": "address"}, {"name": "spender", "type": "address"},
                       {"name": "value", "type": "uint256"}, {"name": "nonce", "type": "uint256"},
                       {"name": "deadline", "type": "uint256"}],
        },
        "primaryType": "Permit",
        "domain": {"name": name, "version": version, "chainId": chain_id, "verifyingContract": verifying},
        "message": {"owner": owner, "spender": spender, "value": value, "nonce": nonce, "deadline": deadline},
    }
