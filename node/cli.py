"""The ``gpunode`` command: parse arguments, call one function, print.

Subcommands whose layer has not landed yet are listed so ``--help`` shows the whole shape of the tool;
they exit with status 2 and say so instead of pretending to work.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from node import __version__
from node.config import ConfigError, load_settings

PENDING = {
    "run": "run the provider node (watch offers, claim, compute, prove, get paid)",
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


def _detect(args: argparse.Namespace) -> int:
    from node.compute.hardware import detect_command  # lazy: keeps --help instant

    return detect_command(args.json)


def _bench(args: argparse.Namespace) -> int:
    import json

    from rich.console import Console

    from node.compute.bench import benchmark, render
    from node.compute.hardware import detect

    os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")  # CUDA indices = NVML indices, before torch loads
    console = Console(stderr=True)
    cap = detect()
    with console.status("benchmarking") as status:
        attestation = benchmark(cap, quick=args.quick, progress=lambda msg: status.update(msg))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(attestation, indent=2) + "\n", encoding="utf-8")
    if args.json:
        print(json.dumps(attestation, indent=2))
    else:
        Console().print(render(attestation))
        print(f"attestation written to {args.out} (benchmarkHash {attestation['benchmark_hash']})")
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

    detect = sub.add_parser("detect", help="show the GPUs (or the CPU) this machine offers, with capacity")
    detect.add_argument("--json", action="store_true", help="print JSON instead of a table")
    detect.set_defaults(func=_detect)

    bench = sub.add_parser("bench", help="measure int8/bf16 throughput and write a capacity attestation")
    bench.add_argument("--out", type=Path, default=Path("attestation.json"), help="attestation file to write")
    bench.add_argument("--quick", action="store_true", help="smaller matrices and fewer repetitions")
    bench.add_argument("--json", action="store_true", help="print the attestation as JSON")
    bench.set_defaults(func=_bench)

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
