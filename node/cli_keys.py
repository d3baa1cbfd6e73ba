"""``gpunode keys new|import|show``: the node's encrypted signing key, from the command line.

A raw key is read from a file or a hidden prompt, never from argv (node.cli refuses anything key-shaped
there before argparse could echo it); every failure is one ``error:`` line naming the file, never a secret.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from node.config import ConfigError, Settings, load_settings


def keys_command(action: Callable[..., int]) -> Callable[[argparse.Namespace], int]:
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


def keys_new(args: argparse.Namespace, settings: Settings, path: Path) -> int:
    from node.chain import keys

    keys.refuse_existing(path)  # before asking for any secret
    password = keys.resolve_password(settings, confirm=True)
    return _created(settings, keys.create_keystore(path, password), path)


def keys_import(args: argparse.Namespace, settings: Settings, path: Path) -> int:
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


def keys_show(args: argparse.Namespace, settings: Settings, path: Path) -> int:
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


def add_keys_parser(sub: Any, conf: argparse.ArgumentParser) -> None:
    """The `keys` command and its actions, under the main parser's subcommands `sub`."""
    keys_cmd = sub.add_parser("keys", help="create, import and inspect the node's encrypted signing key")
    actions = keys_cmd.add_subparsers(dest="keys_action", metavar="ACTION", required=True)
    common = argparse.ArgumentParser(add_help=False, parents=[conf])
    common.add_argument("--keystore", type=Path, metavar="PATH",
                        help="keystore file (default: wallet.keystore, else <node.data_dir>/keystore.json)")
    new = actions.add_parser("new", parents=[common], allow_abbrev=False,
                             help="generate a key and write it to a new encrypted keystore")
    new.set_defaults(func=keys_command(keys_new))
    imp = actions.add_parser(
        "import", parents=[common], allow_abbrev=False, help="import a keystore or a raw private key",
        description="Import an existing keystore as is, or encrypt a raw private key read from a file or a hidden "
                    "prompt. A key is never taken from the command line, where ps and shell history expose it.")
    source = imp.add_mutually_exclusive_group()
    source.add_argument("--from-keystore", type=Path, metavar="FILE",
                        help="a v3 keystore from another tool; it keeps its own password")
    source.add_argument("--private-key-file", type=Path, metavar="FILE",
                        help="file holding the key as 64 hex digits (default: prompt without echo)")
    imp.set_defaults(func=keys_command(keys_import))
    show = actions.add_parser("show", parents=[common], allow_abbrev=False,
                              help="show the keystore's address, kdf and file permissions (no password needed)")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(func=keys_command(keys_show))
