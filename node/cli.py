"""The ``gpunode`` command: parse arguments, call one function, print.

Subcommands whose layer has not landed yet are listed so ``--help`` shows the whole shape of the tool;
they exit with status 2 and say so instead of pretending to work.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from node import __version__
from node.config import ConfigError, load_settings

PENDING = {
    "run": "run the provider node (watch offers, claim, compute, prove, get paid)",
    "detect": "show the GPUs (or CPU) this machine offers, with capacity",
    "bench": "measure int8/bf16 throughput and write a capacity attestation",
    "register": "register this provider on chain and stake",
    "status": "show the node's jobs, earnings and health",
    "request": "requester tools: sign, post and verify job offers",
    "payout": "finalize due jobs, withdraw and sweep earnings",
}


def _config_check(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"configuration is invalid:\n{exc}", file=sys.stderr)
        return 1
    source = args.config or "built-in defaults (and GPUNODE_* environment)"
    print(f"configuration OK: {source}")
    print(f"  chain {settings.chain.chain_id} via {', '.join(settings.chain.rpc_urls)}")
    print(f"  data dir {settings.node.data_dir}; API {'on' if settings.api.enabled else 'off'}")
    return 0


def _pending(name: str) -> Callable[[argparse.Namespace], int]:
    def run(_: argparse.Namespace) -> int:
        print(f"gpunode {name}: not available in this version yet ({PENDING[name]}).", file=sys.stderr)
        return 2

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpunode",
        description="Provider node for decentralized GPU networks: your idle GPU runs signed jobs and gets paid.",
    )
    parser.add_argument("--version", action="version", version=f"gpunode {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    check = sub.add_parser("config", help="validate a configuration file and show what it resolves to")
    check.add_argument("config", nargs="?", type=Path, help="config.toml (default: $GPUNODE_CONFIG)")
    check.set_defaults(func=_config_check)

    for name, text in PENDING.items():
        sub.add_parser(name, help=f"{text} [not yet available]").set_defaults(func=_pending(name))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
