"""Counter-based int8 matrix generator shared by the node, the requester and (later) the contracts.

Why counter-based: a fraud proof must be able to recompute any single input element on-chain without
materialising the matrix, and two honest providers on different hardware must produce bit-identical
inputs. A counter-based generator gives every element independently from (seed, tag, row, col).

Specification (all arithmetic on unsigned 64-bit integers, i.e. modulo 2^64; ``>>`` is a LOGICAL shift)::

    GAMMA = 0x9E3779B97F4A7C15
    MUL1  = 0xBF58476D1CE4E5B9
    MUL2  = 0x94D049BB133111EB

    element(seed, tag, row, col, cols):
        counter = tag * 2^56 + row * cols + col          # tag: A = 1, B = 2
        z = seed + (counter + 1) * GAMMA                 # the splitmix64 state after counter+1 steps
        z = (z ^ (z >> 30)) * MUL1
        z = (z ^ (z >> 27)) * MUL2
        z = z ^ (z >> 31)
        return int8(z & 0xFF)                            # two's complement: v >= 128 -> v - 256

``cols`` is the column count of the matrix being generated (k for A, which is m x k; n for B, which is
k x n), so ``row * cols + col`` is the row-major element index (< 2^28 under the workload limits, which
keeps it below the tag bits). This is splitmix64 (Steele, Lea, Flood 2014) evaluated at a chosen counter,
so each step maps directly onto Solidity ``unchecked`` uint64 arithmetic.

The torch implementation works on int64 tensors: two's complement multiplication and xor agree with the
unsigned ones bit for bit; only the right shift differs (arithmetic in torch), so it is masked into a
logical shift. Tests pin the torch version against the scalar reference.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

TAG_A = 1
TAG_B = 2

GAMMA = 0x9E3779B97F4A7C15
MUL1 = 0xBF58476D1CE4E5B9
MUL2 = 0x94D049BB133111EB

_MASK64 = (1 << 64) - 1
_TAG_SHIFT = 56
# elements per vectorised chunk: bounds the int64 temporaries (~8 bytes * a few live tensors each)
_CHUNK_ELEMENTS = 1 << 21


def splitmix64(z: int) -> int:
    """The splitmix64 output function on a uint64 state (pure Python, exact)."""
    z &= _MASK64
    z = ((z ^ (z >> 30)) * MUL1) & _MASK64
    z = ((z ^ (z >> 27)) * MUL2) & _MASK64
    return z ^ (z >> 31)


def counter(tag: int, row: int, col: int, cols: int) -> int:
    """The uint64 counter of one element; see the module docstring."""
    return ((tag << _TAG_SHIFT) + row * cols + col) & _MASK64


def element(seed: int, tag: int, row: int, col: int, cols: int) -> int:
    """Reference value of one element, in [-128, 127]: the executable form of the specification."""
    z = (seed + (counter(tag, row, col, cols) + 1) * GAMMA) & _MASK64
    low = splitmix64(z) & 0xFF
    return low - 256 if low >= 128 else low


def _signed64(x: int) -> int:
    x &= _MASK64
    return x - (1 << 64) if x >= 1 << 63 else x


def _xor_lshr(z: torch.Tensor, s: int, tmp: torch.Tensor) -> None:
    """``z ^= z >>> s`` in place: the int64 arithmetic shift is masked into a logical (uint64) one."""
    import torch

    torch.bitwise_right_shift(z, s, out=tmp)
    tmp &= (1 << (64 - s)) - 1
    z ^= tmp


def _mix_into(z: torch.Tensor, tmp: torch.Tensor, out: torch.Tensor) -> None:
    _xor_lshr(z, 30, tmp)
    z *= _signed64(MUL1)
    _xor_lshr(z, 27, tmp)
    z *= _signed64(MUL2)
    _xor_lshr(z, 31, tmp)
    z &= 0xFF
    # map 0..255 to -128..127 explicitly instead of relying on an out-of-range narrowing cast
    z ^= 0x80
    z -= 0x80
    out.copy_(z)


def generate_range(
    seed: int, tag: int, start: int, stop: int, device: str | torch.device = "cpu", out: torch.Tensor | None = None
) -> torch.Tensor:
    """Elements with row-major indices ``start <= i < stop`` of a matrix, as a 1-D int8 tensor.

    ``element(seed, tag, r, c, cols)`` depends on ``(r, c)`` only through ``i = r * cols + c``; this is
    the vectorised form over a range of ``i`` (and lets tests reach extreme counters cheaply).
    """
    import torch

    if not 0 <= seed < 1 << 64:
        raise ValueError("seed must be a uint64")
    if not 1 <= tag < 1 << 7:  # keeps counter + 1 below 2^63, i.e. inside torch's int64
        raise ValueError("tag must be in [1, 127]")
    if not 0 <= start <= stop <= 1 << _TAG_SHIFT:
        raise ValueError("element index range outside [0, 2^56]")
    total = stop - start
    if out is None:
        out = torch.empty(total, dtype=torch.int8, device=device)
    if total == 0:
        return out
    base = (tag << _TAG_SHIFT) + 1 + start  # counter + 1 of the first element
    seed_s, gamma_s = _signed64(seed), _signed64(GAMMA)
    chunk = min(total, _CHUNK_ELEMENTS)
    z_buf = torch.empty(chunk, dtype=torch.int64, device=out.device)
    tmp_buf = torch.empty(chunk, dtype=torch.int64, device=out.device)
    for lo in range(0, total, chunk):
        hi = min(total, lo + chunk)
        z, tmp = z_buf[: hi - lo], tmp_buf[: hi - lo]
        torch.arange(base + lo, base + hi, dtype=torch.int64, out=z)
        z *= gamma_s  # wraps modulo 2^64 exactly like uint64 multiplication
        z += seed_s
        _mix_into(z, tmp, out[lo:hi])
    return out


def generate(seed: int, tag: int, rows: int, cols: int, device: str | torch.device = "cpu") -> torch.Tensor:
    """A rows x cols int8 matrix with ``out[r, c] == element(seed, tag, r, c, cols)``."""
    import torch

    if rows < 0 or cols < 0 or rows * cols > 1 << _TAG_SHIFT:
        raise ValueError("matrix too large for the counter layout")
    out = torch.empty((rows, cols), dtype=torch.int8, device=device)
    generate_range(seed, tag, 0, rows * cols, out=out.view(-1))
    return out


def generate_ab(
    seed: int, m: int, k: int, n: int, device: str | torch.device = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two inputs of matmul-int8/v1 for a seed: A (m x k, tag 1) and B (k x n, tag 2)."""
    return generate(seed, TAG_A, m, k, device), generate(seed, TAG_B, k, n, device)
