"""Automated payouts for cron or a systemd timer: the same command as ``gpunode payout`` (node/payout/cli.py),
kept as a script for crontabs that call Python directly.

    python -m scripts.payout --config /etc/gpunode/config.toml [--dry-run] [--wait SECONDS]

See docs/payout.md for the keys, the exit codes and the systemd units.
"""

from __future__ import annotations

import sys

from node.payout.cli import main

if __name__ == "__main__":
    sys.exit(main())
