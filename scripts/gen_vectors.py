"""Writes the shared matmul-int8 generator test vectors (contracts/test/vectors/int8_generator.json).

Why: the on-chain fraud proof regenerates inputs with lib/Int8Generator.sol and the node with
node/compute/workloads/generator.py; one file of vectors, read by a forge test and a pytest, pins both to
the same numbers. The vectors are derived from the Python reference (deterministic, no randomness), so
rerunning this script must reproduce the committed file exactly (the pytest checks that too).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from node.compute.workloads.generator import TAG_A, TAG_B, element

OUT = Path(__file__).resolve().parents[1] / "contracts" / "test" / "vectors" / "int8_generator.json"

_SEEDS = (0, 1, 42, 0x9E3779B97F4A7C15, (1 << 63) - 1, 1 << 63, (1 << 64) - 1)
_POSITIONS = ((0, 0, 1), (0, 1, 7), (3, 5, 8), (1023, 4095, 4096), (65535, 4095, 4096), (4095, 65535, 65536))


def vectors() -> dict[str, list[str]]:
    """Parallel arrays (forge's JSON reader handles those best); integers as decimal strings."""
    out: dict[str, list[str]] = {"seed": [], "tag": [], "row": [], "col": [], "cols": [], "value": []}
    for seed in _SEEDS:
        for tag in (TAG_A, TAG_B):
            for row, col, cols in _POSITIONS:
                for key, value in (("seed", seed), ("tag", tag), ("row", row), ("col", col), ("cols", cols),
                                   ("value", element(seed, tag, row, col, cols))):
                    out[key].append(str(value))
    return out


def render() -> str:
    return json.dumps(vectors(), indent=1) + "\n"


def main() -> int:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(render(), encoding="utf-8")
    print(f"wrote {len(vectors()['value'])} vectors to {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
