"""The ``gpunode`` command: parse arguments, call one function, print.

Subcommands whose layer has not landed yet are listed so ``--help`` shows the whole shape of the tool;
they exit with status 2 and say so instead of pretending to work.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from node import __version__
from node.config import ConfigError, Settings, load_settings

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


def _keys(action: Callable[..., int]) -> Callable[[argparse.Namespace], int]:
    """Shared by `keys new|import|show`: load the settings, pick the keystore path, turn errors into one line."""

    def run(args: argparse.Namespace) -> int:
        from node.chain import keys  # lazy: eth-account is slow to import

        try:
            settings = load_settings(args.config)
        except ConfigError as exc:
            print(f"configuration is invalid:\n{exc}", file=sys.stderr)
            return 1
        path = args.keystore.expanduser().absolute() if args.keystore else keys.default_keystore_path(settings)
        try:
            return action(args, settings, path)
        except keys.KeystoreError as exc:
            print(f"error: {exc}", file=sys.stderr)
        except (EOFError, KeyboardInterrupt):
            print("\nerror: cancelled", file=sys.stderr)
        return 1

    return run


def _created(settings: Settings, address: str, path: Path) -> int:
    print(f"address  {address}")
    print(f"keystore {path}")
    if settings.wallet.keystore != path:
        print(f'to use this key, set wallet.keystore = "{path}" in the config (or GPUNODE_WALLET_KEYSTORE)')
    print("back up the keystore file and its password: the key cannot be recovered without both")
    return 0


def _keys_new(args: argparse.Namespace, settings: Settings, path: Path) -> int:
    from node.chain import keys

    keys.refuse_existing(path)  # before asking for any secret
    password = keys.resolve_password(settings, confirm=True)
    return _created(settings, keys.create_keystore(path, password), path)


def _keys_import(args: argparse.Namespace, settings: Settings, path: Path) -> int:
    import getpass

    from node.chain import keys

    keys.refuse_existing(path)  # before asking for any secret
    if args.from_keystore:  # copied as is, so the node will unlock it with that file's own password
        src = args.from_keystore.expanduser().absolute()
        password = keys.resolve_password(settings, confirm=False, what=f"password of {src}")
        return _created(settings, keys.import_keystore(src, path, password), path)
    if args.private_key_file:
        try:
            text = args.private_key_file.read_bytes()[:4096].decode("ascii", "replace")
        except OSError as exc:
            raise keys.KeystoreError(f"cannot read {args.private_key_file}: {exc.strerror or exc}") from None
    elif sys.stdin is not None and sys.stdin.isatty():
        text = getpass.getpass("private key (64 hex digits, input hidden): ")
    else:
        raise keys.KeystoreError("no private key: stdin is not a terminal, so pass --private-key-file FILE")
    key = keys.parse_private_key(text)
    password = keys.resolve_password(settings, confirm=True)
    return _created(settings, keys.create_keystore(path, password, private_key=key), path)


def _keys_show(args: argparse.Namespace, settings: Settings, path: Path) -> int:
    import json

    from node.chain import keys

    if not path.exists():
        raise keys.KeystoreError(f"no keystore at {path}; create one with `gpunode keys new` or `gpunode keys import`")
    info = keys.keystore_info(path)
    if args.json:
        print(json.dumps({"address": info.address, "path": str(path), "kdf": info.kdf,
                          "mode": f"{info.mode:04o}", "too_open": info.too_open}))
    else:
        print(f"address  {info.address or 'unknown until unlocked (the file does not record it)'}")
        print(f"keystore {path}")
        print(f"kdf      {info.kdf}")
        print(f"mode     {info.mode:04o}")
    if info.too_open:
        print(f"warning: {path} is open to group or others (mode {info.mode:04o}); run: chmod 600 {path}",
              file=sys.stderr)
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

    keys_cmd = sub.add_parser("keys", help="create, import and inspect the node's encrypted signing key")
    actions = keys_cmd.add_subparsers(dest="keys_action", metavar="ACTION", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, metavar="FILE",
                        help="config.toml (default: $GPUNODE_CONFIG, else built-in defaults)")
    common.add_argument("--keystore", type=Path, metavar="PATH",
                        help="keystore file (default: wallet.keystore, else <node.data_dir>/keystore.json)")
    new = actions.add_parser("new", parents=[common], allow_abbrev=False,
                             help="generate a key and write it to a new encrypted keystore")
    new.set_defaults(func=_keys(_keys_new))
    imp = actions.add_parser(
        "import", parents=[common], allow_abbrev=False, help="import a keystore or a raw private key",
        description="Import an existing keystore as is, or encrypt a raw private key read from a file or a hidden "
                    "prompt. A key is never taken from the command line, where ps and shell history expose it.")
    source = imp.add_mutually_exclusive_group()
    source.add_argument("--from-keystore", type=Path, metavar="FILE",
                        help="a v3 keystore from another tool; it keeps its own password")
    source.add_argument("--private-key-file", type=Path, metavar="FILE",
                        help="file holding the key as 64 hex digits (default: prompt without echo)")
    imp.set_defaults(func=_keys(_keys_import))
    show = actions.add_parser("show", parents=[common], allow_abbrev=False,
                              help="show the keystore's address, kdf and file permissions (no password needed)")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(func=_keys(_keys_show))

    for name, text in PENDING.items():
        sub.add_parser(name, help=f"{text} [not yet available]").set_defaults(func=_pending(name))
    return parser


# A 32-byte hex value, alone or as --option=value: what a private key pasted onto the command line looks like.
_KEY_LIKE_ARG = re.compile(r"(?:-[\w-]*=)?(?:0x)?[0-9a-fA-F]{64}")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "keys" in argv and any(_KEY_LIKE_ARG.fullmatch(arg) for arg in argv):  # before argparse echoes it
        print("error: refusing a private key on the command line, where ps and shell history expose it; use "
              "`gpunode keys import --private-key-file FILE` or its hidden prompt", file=sys.stderr)
        return 2
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
