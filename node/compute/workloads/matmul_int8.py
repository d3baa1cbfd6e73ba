"""matmul-int8/v1: C = A @ B with A (m x k) and B (k x n) int8, C (m x n) int32, computed exactly.

Why this workload: integer matmul has one correct answer on every device, so any provider's result can
be checked bit for bit, cheaply (Freivalds) by the provider itself and, through the generator, element
by element in an on-chain fraud proof.

Params (UTF-8 JSON object, nothing else accepted)::

    {"m": int, "k": int, "n": int, "seed": int}          # A, B from node.compute.workloads.generator
    {"m": int, "k": int, "n": int, "input": "safetensors"} # A, B from the job's input file
    {"m": int, "k": int, "n": int, "input": "safetensors", "ab_root": "0x…"}  # ... committed by ab_root

with 1 <= m, k, n <= 65536, m*k, k*n, m*n each <= 2^28, 0 <= seed < 2^64. The input form expects a
safetensors file holding exactly two int8 tensors, "A" of shape (m, k) and "B" of shape (k, n). Any form
may also carry ``"audit": "0x…"`` (32 bytes), the requester's commitment to an audit secret, which the
worker ignores: it only matters to the on-chain verifier (see node.chain.fraud).

``ab_root`` (``input_root``: RFC 6962 over the m rows of A and the n columns of B, k bytes each) is what
MatmulInt8Verifier recomputes a challenged element from, so it is checked against the fetched matrices
*before* computing: a requester could otherwise commit to other matrices than the file it serves and
"prove" an honest result wrong. A mismatch fails the job ("input commitment mismatch"). The inputs are
only fetched after the claim, so such a job still costs the provider its claim (the bond goes to the
requester at expiry), the same exposure as an input URL that serves a wrong file; the contract, by
contrast, can never be made to slash a provider that computed on the committed inputs.

Output file: the raw bytes of C, int32 little-endian, row-major, no header -- exactly m*n*4 bytes, so
its size and the byte offset of any element (4 * (row * n + col)) follow from the params alone, which
is what a fraud proof against a committed output needs.

Exactness: every |C[i, j]| <= k * 128 * 128 <= 2^30, so int32 never overflows. On CUDA the cuBLAS int8
kernel (``torch._int_mm``) is used, zero-padded up to its shape rules when needed (padding with zeros
adds nothing to any dot product). On CPU ``torch._int_mm`` has an exact integer kernel for any shape.
The float64 fallback is exact too: all products and partial sums are integers below 2^53.

Nothing is written as the output until a Freivalds check has passed: a wrong C is a failed job, never a
published result.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import sys
from typing import TYPE_CHECKING, Any

from node.compute.commitment import leaf_hash, merkle_root_of_leaves
from node.compute.workloads import (
    Estimate,
    ParamsError,
    VerificationError,
    Workload,
    WorkloadError,
    require_int,
    require_keys,
)
from node.compute.workloads.generator import generate_ab

if TYPE_CHECKING:
    import torch

NAME = "matmul-int8/v1"
MAX_DIM = 65536
MAX_ELEMENTS = 1 << 28
FREIVALDS_TRIALS = 8
# Freivalds vector entries are drawn from [0, FREIVALDS_RANGE): a wrong C survives one trial with
# probability <= 1/64, and every intermediate stays below 2^53 (see freivalds_check), so float64 is exact.
FREIVALDS_RANGE = 64
_CHUNK_ELEMENTS = 1 << 22
_WORKSPACE_BYTES = 256 << 20
_HEX32 = re.compile(r"0x[0-9a-fA-F]{64}")


def int_mm_supported(m: int, k: int, n: int) -> bool:
    """Shapes that CUDA ``torch._int_mm`` accepts (checks of ``_int_mm_out_cuda``, aten/src/ATen/native/cuda/Blas.cpp).

    The kernel rejects ``self.size(0) <= 16`` and requires ``self.size(1)`` and ``mat2.size(1)`` to be
    positive multiples of 8; both operands must be int8 and 2-D. (The CPU kernel accepts any shape.)
    """
    return m > 16 and k > 0 and k % 8 == 0 and n > 0 and n % 8 == 0


def padded_shape(m: int, k: int, n: int) -> tuple[int, int, int]:
    """The smallest shape >= (m, k, n) that ``int_mm_supported`` accepts."""
    return max(m, 17), -(-k // 8) * 8, -(-n // 8) * 8


def _check_dims(params: dict[str, Any]) -> tuple[int, int, int]:
    m = require_int(params, "m", 1, MAX_DIM)
    k = require_int(params, "k", 1, MAX_DIM)
    n = require_int(params, "n", 1, MAX_DIM)
    for label, size in (("m*k", m * k), ("k*n", k * n), ("m*n", m * n)):
        if size > MAX_ELEMENTS:
            raise ParamsError(f"{label} = {size} exceeds {MAX_ELEMENTS}")
    return m, k, n


def input_leaf_hashes(a: bytes, b: bytes, m: int, k: int, n: int) -> list[bytes]:
    """Leaf hashes of the input commitment: row r of A (k bytes) for r < m, then column c of B (B[0][c],
    B[1][c], ...) for c < n. ``a`` and ``b`` are the raw int8 bytes of A (m x k) and B (k x n), row-major."""
    a, b = bytes(a), bytes(b)
    if len(a) != m * k or len(b) != k * n:
        raise ValueError(f"A must be {m}x{k} and B {k}x{n} int8 bytes, got {len(a)} and {len(b)} bytes")
    return [leaf_hash(a[r * k:(r + 1) * k]) for r in range(m)] + [leaf_hash(b[c::n]) for c in range(n)]


def input_root(a: bytes, b: bytes, m: int, k: int, n: int) -> bytes:
    """The ``ab_root`` of supplied inputs: RFC 6962 root over ``input_leaf_hashes``."""
    return merkle_root_of_leaves(input_leaf_hashes(a, b, m, k, n))


def check_input_root(a: torch.Tensor, b: torch.Tensor, expected: str) -> None:
    """Raises WorkloadError unless the CPU int8 matrices A and B have the input commitment ``expected``."""
    m, k = a.shape
    n = b.shape[1]
    got = "0x" + input_root(_raw(a), _raw(b), m, k, n).hex()
    if got != expected.lower():
        raise WorkloadError(f"input commitment mismatch: the params' ab_root is {expected.lower()}, the input "
                            f"file's A and B give {got}; not computing a result the verifier would judge "
                            "against other matrices")


def _raw(t: torch.Tensor) -> bytes:
    t = t.contiguous()
    return ctypes.string_at(t.data_ptr(), t.numel()) if t.numel() else b""


def matmul_exact(a: torch.Tensor, b: torch.Tensor, *, method: str = "auto") -> tuple[torch.Tensor, str]:
    """Exact int32 product of two int8 matrices on their device; returns (C, method used).

    ``method`` is "auto", "int_mm" (requires a supported shape on CUDA), "int_mm_padded" or "f64".
    """
    import torch

    if a.dtype != torch.int8 or b.dtype != torch.int8 or a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[0]:
        raise ValueError("expected int8 matrices of shapes (m, k) and (k, n)")
    a, b = a.contiguous(), b.contiguous()
    m, k = a.shape
    n = b.shape[1]
    if method == "auto":
        if a.device.type == "cuda" and not int_mm_supported(m, k, n):
            method = "int_mm_padded"
        else:
            method = "int_mm"
        try:
            return matmul_exact(a, b, method=method)
        except torch.OutOfMemoryError:
            raise
        except RuntimeError:
            # e.g. a GPU without int8 tensor-core support in cuBLASLt; the float64 path is exact as well
            return matmul_exact(a, b, method="f64")
    if method == "int_mm":
        return torch._int_mm(a, b), method
    if method == "int_mm_padded":
        mp, kp, np_ = padded_shape(m, k, n)
        ap = torch.zeros((mp, kp), dtype=torch.int8, device=a.device)
        ap[:m, :k] = a
        bp = torch.zeros((kp, np_), dtype=torch.int8, device=b.device)
        bp[:k, :n] = b
        return torch._int_mm(ap, bp)[:m, :n].contiguous(), method
    if method == "f64":
        bd = b.to(torch.float64)
        c = torch.empty((m, n), dtype=torch.int32, device=a.device)
        step = max(1, _CHUNK_ELEMENTS // max(k, n))
        for r in range(0, m, step):
            c[r : r + step] = (a[r : r + step].to(torch.float64) @ bd).to(torch.int32)
        return c, method
    raise ValueError(f"unknown method {method!r}")


def _rows_f64(mat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``mat @ x`` in float64, converting ``mat`` a block of rows at a time to bound memory."""
    import torch

    out = torch.empty((mat.shape[0], x.shape[1]), dtype=torch.float64, device=mat.device)
    step = max(1, _CHUNK_ELEMENTS // max(1, mat.shape[1]))
    for r in range(0, mat.shape[0], step):
        out[r : r + step] = mat[r : r + step].to(torch.float64) @ x
    return out


def freivalds_check(
    a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, trials: int = FREIVALDS_TRIALS, *, seed: int | None = None
) -> None:
    """Probabilistically verify ``c == a @ b``; raises ``VerificationError`` if it is not.

    A wrong ``c`` passes with probability <= (1/64)^trials. The random vectors come from a freshly
    OS-seeded generator (``seed`` is for tests only). The products are taken in float64 and are exact:
    |B r| < n * 128 * 64 <= 2^29, |A (B r)| <= k * 128 * 2^29 <= 2^52 and, for any int32 c,
    |c r| < n * 2^31 * 64 <= 2^53, with n, k <= 2^16 -- every partial sum is an integer below 2^53.
    """
    import torch

    m, k = a.shape
    n = b.shape[1]
    if tuple(b.shape) != (k, n) or tuple(c.shape) != (m, n) or c.dtype != torch.int32:
        raise VerificationError(f"result has shape {tuple(c.shape)} / {c.dtype}, expected ({m}, {n}) int32")
    gen = torch.Generator(device="cpu")
    gen.manual_seed(int.from_bytes(os.urandom(8), "little") if seed is None else seed)
    r = torch.randint(0, FREIVALDS_RANGE, (n, trials), generator=gen, dtype=torch.int64)
    r = r.to(device=a.device, dtype=torch.float64)
    left = _rows_f64(a, _rows_f64(b, r)).to(torch.int64)
    right = _rows_f64(c, r).to(torch.int64)
    bad = int((left != right).any(dim=0).sum().item())
    if bad:
        raise VerificationError(f"Freivalds check failed in {bad} of {trials} trials: result is wrong")


def write_output(c: torch.Tensor, output_path: str) -> str:
    """Write C as raw little-endian int32 row-major bytes (atomically); return the file's SHA-256 hex."""
    if sys.byteorder != "little":
        raise WorkloadError("output format is little-endian; big-endian hosts are not supported")
    tmp = f"{output_path}.tmp-{os.getpid()}"
    digest = hashlib.sha256()
    rows, cols = c.shape
    step = max(1, _CHUNK_ELEMENTS // max(1, cols))
    try:
        with open(tmp, "wb") as f:
            for r in range(0, rows, step):
                block = c[r : r + step].cpu().contiguous()
                data = ctypes.string_at(block.data_ptr(), block.numel() * 4)
                digest.update(data)
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, output_path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return digest.hexdigest()


def load_inputs(input_path: str, m: int, k: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A and B from a safetensors file; dtype, shapes and the tensor set are checked before loading."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(input_path, framework="pt") as f:
            names = set(f.keys())
            if names != {"A", "B"}:
                raise WorkloadError(f"input must hold exactly tensors 'A' and 'B', found {sorted(names)}")
            for name, shape in (("A", (m, k)), ("B", (k, n))):
                info = f.get_slice(name)
                if info.get_dtype() != "I8":
                    raise WorkloadError(f"tensor {name} has dtype {info.get_dtype()}, expected I8 (int8)")
                if tuple(info.get_shape()) != shape:
                    raise WorkloadError(f"tensor {name} has shape {tuple(info.get_shape())}, expected {shape}")
            return f.get_tensor("A"), f.get_tensor("B")
    except SafetensorError as e:
        raise WorkloadError(f"input is not a valid safetensors file: {e}") from e


class MatmulInt8(Workload):
    name = NAME

    def check_params(self, params: dict[str, Any]) -> dict[str, Any]:
        if "input" in params:
            require_keys(params, {"m", "k", "n", "input"}, {"ab_root", "audit"})
            if params["input"] != "safetensors":
                raise ParamsError('input must be "safetensors"')
        else:
            require_keys(params, {"m", "k", "n", "seed"}, {"audit"})
            require_int(params, "seed", 0, (1 << 64) - 1)
        for key in ("ab_root", "audit"):
            if key in params and not (isinstance(params[key], str) and _HEX32.fullmatch(params[key])):
                raise ParamsError(f"{key} must be 0x followed by 64 hex digits")
        _check_dims(params)
        return dict(params)

    def estimate(self, params: dict[str, Any]) -> Estimate:
        m, k, n = params["m"], params["k"], params["n"]
        mp, kp, np_ = padded_shape(m, k, n)
        operands = m * k + k * n + 4 * m * n
        padded = mp * kp + kp * np_ + 4 * mp * np_ if (mp, kp, np_) != (m, k, n) else 0
        return Estimate(int_ops=2 * m * k * n, output_bytes=4 * m * n, vram_bytes=operands + padded + _WORKSPACE_BYTES)

    def run(self, params: dict[str, Any], input_path: str | None, output_path: str, device: str) -> dict[str, Any]:
        import torch

        m, k, n = params["m"], params["k"], params["n"]
        dev = torch.device(device)
        with torch.inference_mode():
            if "seed" in params:
                a, b = generate_ab(params["seed"], m, k, n, dev)
            else:
                if input_path is None:
                    raise WorkloadError("params name an input file but the job has none")
                a, b = load_inputs(input_path, m, k, n)
                if "ab_root" in params:
                    check_input_root(a, b, params["ab_root"])
                a, b = a.to(dev), b.to(dev)
            c, method = matmul_exact(a, b)
            freivalds_check(a, b, c)
            sha = write_output(c, output_path)
        return {
            "workload": NAME,
            "shape": [m, n],
            "dtype": "int32",
            "method": method,
            "freivalds_trials": FREIVALDS_TRIALS,
            "output_bytes": 4 * m * n,
            "output_sha256": sha,
        }
