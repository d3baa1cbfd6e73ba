"""``gpunode init``: a first config.toml and the node's key, in one step, scriptable or guided.

Every value comes from a flag; on a terminal (unless ``--non-interactive``) the ones not given are asked
for, each with its default. The config holds only the keys init was given (each under a comment), so the
built-in defaults and config.example.toml stay the single source for everything else. Nothing is half
done: the config is validated with the real loader and written (atomically) only after the keystore
exists, an existing config is replaced only with ``--force``, and a keystore is never overwritten — an
existing one is unlocked and reused, so re-running init after a mistake is safe.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from node.cli import CliError, address_arg
from node.config import ConfigError, Settings, load_settings, read_wallet_password

INIT_KEYS = {  # the keys `init` may write, in file order, each with the comment written above it
    "node.data_dir": "Where the node keeps its database, benchmark, results and job scratch space.",
    "chain.chain_id": "EVM chain id the node must be talking to (31337 = local anvil).",
    "chain.rpc_urls": "JSON-RPC endpoints, tried in order.",
    "chain.deployments": "Deployed contract addresses (written by `make devnet` or scripts/deploy.py).",
    "wallet.keystore": "Encrypted keystore holding the node's signing key (the operator address).",
    "wallet.password_file": "File holding the keystore password; $GPUNODE_WALLET_PASSWORD wins over it.",
    "payout.address": "Where earnings are paid: not the node's own key, ideally a cold wallet.",
}


def _toml(value: Any) -> str:
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)  # a JSON string is a valid TOML basic string


def config_text(values: dict[str, Any]) -> str:
    """A config.toml holding just `values` (dotted keys of INIT_KEYS), each under its comment."""
    lines = ["# gpunode configuration written by `gpunode init`. Every key not set here keeps its built-in",
             "# default; config.example.toml lists them all with their meaning. Check with: gpunode config FILE"]
    for section in dict.fromkeys(k.split(".")[0] for k in INIT_KEYS):
        keys = [k for k in INIT_KEYS if k.split(".")[0] == section and k in values]
        if keys:
            lines += ["", f"[{section}]"]
            for key in keys:
                lines += [f"# {INIT_KEYS[key]}", f"{key.split('.')[1]} = {_toml(values[key])}"]
    return "\n".join(lines) + "\n"


def _absolute(path: str | Path) -> str:
    return str(Path(path).expanduser().absolute())


def init_values(args: argparse.Namespace, ask: Callable[[str, str], str | None]) -> dict[str, Any]:
    """The keys to write: flags first, then `ask(label, default)` (None: not asked) for the rest."""
    values: dict[str, Any] = {}
    data_dir = args.data_dir or ask("data directory", "~/.gpunode")
    if data_dir:
        values["node.data_dir"] = _absolute(data_dir)
    rpc = ",".join(args.rpc or []) or ask("RPC URL(s), comma-separated", "http://127.0.0.1:8545")
    if rpc:
        values["chain.rpc_urls"] = [u.strip() for u in rpc.split(",") if u.strip()]
    chain_id = args.chain_id or ask("chain id", "31337")
    if chain_id:
        try:
            values["chain.chain_id"] = int(chain_id)
        except ValueError:
            raise CliError(f"chain id {chain_id!r} is not an integer") from None
    # Always written, absolute: the built-in default names chain 31337 and is anchored at the config's folder.
    default_dep = Path("deployments") / f"{values.get('chain.chain_id', 31337)}.json"
    values["chain.deployments"] = _absolute(args.deployments or ask("deployments file", str(default_dep))
                                            or default_dep)
    keystore = args.keystore or Path(values.get("node.data_dir", "~/.gpunode")) / "keystore.json"
    values["wallet.keystore"] = _absolute(keystore)  # always written: `gpunode run` needs it set
    if args.password_file:
        values["wallet.password_file"] = _absolute(args.password_file)
    payout = args.payout or ask("payout address (Enter: set it later)", "")
    if payout:
        try:
            values["payout.address"] = address_arg(payout)
        except argparse.ArgumentTypeError as exc:
            raise CliError(f"payout address: {exc}") from None
    return values


def init_command(args: argparse.Namespace) -> int:
    config = (args.config or Path("config.toml")).expanduser().absolute()
    if config.exists() and not args.force:
        raise CliError(f"refusing to overwrite existing {config}", "pass --force to replace it (a keystore is "
                       "never overwritten: an existing one is reused)")
    interactive = not args.non_interactive and sys.stdin is not None and sys.stdin.isatty()

    def ask(label: str, default: str) -> str | None:
        return (input(f"{label} [{default}]: ").strip() or default) if interactive else None

    values = init_values(args, ask)
    config.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=config.parent, prefix=f".{config.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(config_text(values))
        try:
            settings = load_settings(tmp)
        except ConfigError as exc:  # name the file the operator will see, not the temporary one
            raise ConfigError([p.replace(str(tmp), str(config)) for p in exc.problems]) from None
        if not interactive and read_wallet_password(settings) is None:
            raise CliError(f"no keystore password: pass --password-file FILE or set ${settings.wallet.password_env}",
                           "" if args.non_interactive else "stdin is not a terminal, so nothing can be asked")
        address, how = init_keystore(args, settings, interactive)
        payout = values.get("payout.address", "")
        if payout.lower() == address.lower():
            raise CliError(f"the payout address {payout} is the node's own key; use another address (ideally a "
                           "cold wallet)", "the keystore is kept; rerun init with another --payout")
        os.replace(tmp, config)
    finally:
        tmp.unlink(missing_ok=True)
    print(f"config   {config}")
    print(f"address  {address} ({how})")
    print(f"keystore {settings.wallet.keystore}")
    print("back up the keystore file and its password: the key cannot be recovered without both")
    if not settings.chain.deployments.exists():
        print(f"note: {settings.chain.deployments} does not exist yet; deploy first (make devnet, "
              "scripts/deploy.py) or fix chain.deployments before registering")
    if not payout:
        print("note: no payout address yet; set payout.address or pass --payout to `gpunode register`")
    print(f"next:\n  export GPUNODE_CONFIG={config}\n  gpunode bench\n  gpunode register --stake AMOUNT\n"
          "  gpunode run")
    return 0


def init_keystore(args: argparse.Namespace, settings: Settings, interactive: bool) -> tuple[str, str]:
    """Import (--import-key-file), reuse (the keystore exists) or create the key; returns (address, how)."""
    from node.chain import keys  # lazy: eth-account is slow to import

    path = keys.default_keystore_path(settings)

    def password(confirm: bool, what: str = "keystore password") -> str:
        return keys.resolve_password(settings, confirm=confirm, what=what, stdin_isatty=lambda: interactive)

    if args.import_key_file:
        src = args.import_key_file.expanduser().absolute()
        keys.refuse_existing(path)  # before asking for any secret
        try:
            raw = src.read_bytes()[:65536]
        except OSError as exc:
            raise CliError(f"cannot read {src}: {exc.strerror or exc}") from None
        if raw.lstrip().startswith(b"{"):  # a v3 keystore from another tool: copied as is, keeps its password
            return keys.import_keystore(src, path, password(False, f"password of {src}")), f"imported from {src}"
        key = keys.parse_private_key(raw.decode("ascii", "replace"))
        return keys.create_keystore(path, password(True), private_key=key), f"private key imported from {src}"
    if path.exists():
        return keys.load_signer(path, password(False)).address, "existing keystore, unlocked"
    return keys.create_keystore(path, password(True)), "new key"
