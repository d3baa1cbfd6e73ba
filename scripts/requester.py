#!/usr/bin/env python3
"""The requester tools without installing the package: the same command as ``gpunode request``.

    python scripts/requester.py run --rpc http://127.0.0.1:8545 --key-file key.hex --m 64 --k 64 --n 64 \\
        --seed 7 --payment 1
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's node package, when not installed

from node.requester.cli import main  # noqa: E402 - after the path set-up above

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
