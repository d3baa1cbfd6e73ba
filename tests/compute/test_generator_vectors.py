"""The shared generator vectors: the committed file is what the Python reference gives today, and the
vectorised torch generator agrees with it. The forge test Int8Generator.t.sol reads the same file, so the
Solidity generator used by fraud proofs is pinned to the same numbers."""

from __future__ import annotations

import json

from node.compute.workloads.generator import generate_range
from scripts.gen_vectors import OUT, render


def test_committed_vectors_are_the_reference_output() -> None:
    assert OUT.read_text(encoding="utf-8") == render(), "rerun scripts/gen_vectors.py"


def test_torch_generator_matches_every_vector() -> None:
    data = json.loads(OUT.read_text(encoding="utf-8"))
    assert len(data["value"]) >= 40
    assert {int(v) for v in data["value"]} - set(range(-128, 128)) == set()
    for seed, tag, row, col, cols, value in zip(*(data[k] for k in ("seed", "tag", "row", "col", "cols", "value")),
                                                strict=True):
        index = int(row) * int(cols) + int(col)
        got = generate_range(int(seed), int(tag), index, index + 1)
        assert int(got[0]) == int(value), (seed, tag, row, col, cols)
