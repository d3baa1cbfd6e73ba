"""Exports the ABIs the node needs from forge's build output into node/chain/abi/ (committed).

Run by ``make contracts`` after ``forge build``; tests/chain/test_abi_export.py fails when the committed
files drift from what the contract sources compile to.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from node.chain.contracts import EXPORTED_CONTRACTS, FORGE_OUT, REPO_ROOT, forge_artifact

ABI_DIR = REPO_ROOT / "node" / "chain" / "abi"


def render_abi(name: str, out_dir: Path = FORGE_OUT) -> str:
    """Stable text for one ABI (sorted keys) so diffs show real interface changes only."""
    if name == "IWorkloadVerifier":  # an interface has no bytecode, read the ABI directly
        data = json.loads((out_dir / f"{name}.sol" / f"{name}.json").read_text(encoding="utf-8"))
        abi = data["abi"]
    else:
        abi = forge_artifact(name, out_dir)["abi"]
    return json.dumps(abi, indent=1, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--check", action="store_true", help="only compare; exit 1 when a file would change")
    args = ap.parse_args(argv)
    stale = []
    for name in EXPORTED_CONTRACTS:
        text = render_abi(name)
        path = ABI_DIR / f"{name}.json"
        if path.exists() and path.read_text(encoding="utf-8") == text:
            continue
        stale.append(name)
        if not args.check:
            ABI_DIR.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"exported {path.relative_to(REPO_ROOT)}")
    if args.check and stale:
        print(f"ABIs out of date: {', '.join(stale)}; run `make contracts`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
