"""Which elements of a wrong matmul-int8 result are wrong: the evidence a fraud proof names.

A fraud proof on chain recomputes one element C[i, j] (a k-term dot product) and compares it with the
committed one, so the requester must name an (i, j) that is really wrong. Multiplying the whole A @ B again
to find one is what verification avoids, so the search narrows down in two cheap steps:

1. rows: Freivalds per row. For random vectors r, row i of ``A (B r)`` differs from row i of ``C r``
   unless row i of C is right (or a wrong row's error is orthogonal to every r: probability at most
   (1/64)^trials). Exact in float64, by the same bounds as ``freivalds_check`` (every partial sum is an
   integer below 2^53); costs O((m + n) k) per vector, like the check itself.
2. columns: only the wrong rows are multiplied exactly (``A[rows] @ B``), a block of rows at a time, and
   compared with C; the search stops once ``limit`` wrong elements are found.

A provider that flips one element costs one row product to locate; one that commits garbage is found in
its first row. Nothing here touches the chain (node.requester.proofs sends the proof).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from node.compute.workloads import ParamsError, WorkloadError
from node.requester.errors import RequesterError

if TYPE_CHECKING:
    import torch

ROW_TRIALS = 16  # random vectors for the per-row test: a wrong row hides with probability <= 2^-96
ROW_BLOCK_ELEMENTS = 1 << 22  # elements of A[rows] @ B computed at once while looking for wrong columns


@dataclass(frozen=True)
class WrongElement:
    """C[i, j] as committed and as A @ B says it is."""

    i: int
    j: int
    committed: int
    expected: int

    def to_json(self) -> dict[str, int]:
        return {"i": self.i, "j": self.j, "committed": self.committed, "expected": self.expected}


def matrices(params: dict[str, Any], input_path: Path | None) -> tuple[torch.Tensor, torch.Tensor]:
    """A and B of a job (int8, CPU): generated from the seed, or read from the job's input file."""
    from node.compute.workloads.generator import generate_ab
    from node.compute.workloads.matmul_int8 import load_inputs

    m, k, n = params["m"], params["k"], params["n"]
    if "seed" in params:
        return generate_ab(params["seed"], m, k, n, "cpu")
    if input_path is None:
        raise RequesterError("these params read A and B from an input file, and none is recorded")
    try:
        return load_inputs(str(input_path), m, k, n)
    except WorkloadError as exc:
        raise RequesterError(f"the job's own input {input_path} is unusable: {exc}") from None


def read_result(result: Path, m: int, n: int) -> torch.Tensor:
    """C from a result file (raw int32 little-endian, row-major); RequesterError unless it is m*n*4 bytes."""
    import numpy as np
    import torch

    size = Path(result).stat().st_size
    if size != 4 * m * n:
        raise RequesterError(f"{result} is {size} bytes; C of {m}x{n} int32 is {4 * m * n}")
    return torch.from_numpy(np.fromfile(result, dtype="<i4").astype(np.int32, copy=False).reshape(m, n))


def wrong_rows(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, trials: int = ROW_TRIALS, *,
               seed: int | None = None) -> list[int]:
    """The rows of C that differ from A @ B (step 1 of the module docstring), in increasing order."""
    import torch

    from node.compute.workloads.matmul_int8 import FREIVALDS_RANGE, _rows_f64

    gen = torch.Generator(device="cpu")
    gen.manual_seed(int.from_bytes(os.urandom(8), "little") if seed is None else seed)
    r = torch.randint(0, FREIVALDS_RANGE, (b.shape[1], trials), generator=gen, dtype=torch.int64)
    r = r.to(torch.float64)
    left = _rows_f64(a, _rows_f64(b, r)).to(torch.int64)
    right = _rows_f64(c, r).to(torch.int64)
    return [int(v) for v in (left != right).any(dim=1).nonzero().flatten()]


def locate(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, *, limit: int = 16,
           rows: list[int] | None = None) -> list[WrongElement]:
    """Up to ``limit`` wrong elements of C, row by row (step 2); ``rows`` defaults to ``wrong_rows``.
    An empty list means C = A @ B (up to the per-row test's 2^-96)."""
    from node.compute.workloads.matmul_int8 import matmul_exact

    if limit < 1:
        raise ValueError("limit must be >= 1")
    rows = wrong_rows(a, b, c) if rows is None else rows
    found: list[WrongElement] = []
    step = max(1, ROW_BLOCK_ELEMENTS // max(1, b.shape[0], b.shape[1]))
    for start in range(0, len(rows), step):
        block = rows[start:start + step]
        exact, _ = matmul_exact(a[block].contiguous(), b)
        bad = (c[block] != exact).nonzero()
        for at, j in bad.tolist():
            found.append(WrongElement(block[at], j, int(c[block[at], j]), int(exact[at, j])))
            if len(found) >= limit:
                return found
    return found


def expected_element(a: torch.Tensor, b: torch.Tensor, i: int, j: int) -> int:
    """(A @ B)[i, j], exactly: what the verifier contract recomputes."""
    import torch

    return int((a[i].to(torch.int64) * b[:, j].to(torch.int64)).sum())


def check_params(params: dict[str, Any]) -> dict[str, Any]:
    from node.compute.workloads.matmul_int8 import MatmulInt8

    try:
        return MatmulInt8().check_params(dict(params))
    except ParamsError as exc:
        raise RequesterError(f"the job's params are not matmul-int8/v1 params: {exc.reason}") from None


def locate_file(params: dict[str, Any], input_path: Path | None, result: Path, *,
                limit: int = 16) -> list[WrongElement]:
    """``locate`` on a job's result file."""
    params = check_params(params)
    a, b = matrices(params, input_path)
    return locate(a, b, read_result(result, params["m"], params["n"]), limit=limit)


def element_of(params: dict[str, Any], input_path: Path | None, result: Path, i: int, j: int) -> WrongElement:
    """C[i, j] as the file holds it and as it should be (equal when the element is right)."""
    params = check_params(params)
    m, n = params["m"], params["n"]
    if not (0 <= i < m and 0 <= j < n):
        raise RequesterError(f"element ({i}, {j}) is outside C, which is {m}x{n}")
    a, b = matrices(params, input_path)
    c = read_result(result, m, n)
    return WrongElement(i, j, int(c[i, j]), expected_element(a, b, i, j))
