"""The ``gpunode`` command: parse arguments, call one function, print.

Every command turns a failure into one line on stderr (``gpunode <cmd>: error: ...``) plus, where it helps,
a hint, and exits 1 (2 for usage errors); ``--debug`` shows the traceback instead. The work itself lives in
the library (node.chain.provider for register/withdraw, node.service for run), so it is testable without a
terminal. ``request`` (node.requester.cli), ``payout`` (node.payout.cli), ``mediate`` (node.mediator.cli) and
``devnet`` (scripts/devnet.py) have parsers of their own: the arguments after the command name are handed to
them as they are.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import traceback
from collections.abc import Callable, Sequence
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from node import __version__
from node.config import ConfigError, Settings, load_settings, to_base_units

# Commands with a parser of their own: (help line, "module:function" taking the remaining arguments).
DELEGATED = {
    "request": ("requester tools: sign, post, follow, download and verify jobs; accept or dispute",
                "node.requester.cli:main"),
    "payout": ("finalize due jobs, withdraw and sweep earnings (for cron or a systemd timer)", "node.payout.cli:main"),
    "mediate": ("mediator tools: check a disputed job and sign a ruling; submit rulings to resolve it",
                "node.mediator.cli:main"),
}
# Errors whose message is already written for the operator: shown as is, without "rerun with --debug".
# Matched by class name so that classifying an error never imports the (slow) module that defines it.
_EXPECTED = {"CliError", "ApiError", "ConfigError", "KeystoreError", "OperatorError", "DeploymentError",
             "StartupError", "DevnetError", "ArtifactError", "DataDirLocked", "ChainMismatchError"}


class CliError(Exception):
    """A failure the operator can fix; `hint` (optional) says how. `label` False drops the "error:" prefix."""

    def __init__(self, message: str, hint: str = "", *, label: bool = True) -> None:
        super().__init__(message)
        self.hint, self.label = hint, label


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(getattr(args, "config", None))


def token_units(amount: Decimal, decimals: int, flag: str) -> int:
    """Whole tokens (from amount_arg) to base units; too many decimal places is the user's error, never rounded."""
    try:
        return to_base_units(amount, decimals)
    except ValueError:
        raise CliError(f"{flag} {amount}: the token has {decimals} decimals, so at most {decimals} decimal "
                       "places") from None


def amount_arg(text: str) -> Decimal:
    """argparse type: a token amount in whole tokens, e.g. 100 or 0.5."""
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        value = Decimal("NaN")
    if not value.is_finite() or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not an amount >= 0 in whole tokens (e.g. 100 or 0.5)")
    return value


def address_arg(text: str) -> str:
    """argparse type: an address, 0x and 40 hex digits (checksum not required)."""
    if not re.fullmatch(r"0x[0-9a-fA-F]{40}", text.strip()):
        raise argparse.ArgumentTypeError(f"{text!r} is not an address (0x and 40 hex digits)")
    return text.strip()


def tolerance_arg(text: str) -> float:
    """argparse type of --rtol/--atol: a finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number >= 0")
    return value


_MAX_KEY_FILE = 4096


def signer_from_args(args: argparse.Namespace, *, password_env: str, role: str, required: bool) -> Any:
    """The key of a tool that signs (requester, mediator): --keystore (password from ``password_env``,
    --password-file or a prompt) or, on devnets, --key-file with a raw hex key. Never from the command line,
    where ps and shell history show it. None when no key is given and ``required`` is false."""
    from node.chain.keys import Signer, load_signer, parse_private_key, password_or_prompt

    if args.keystore and args.key_file:
        raise CliError("give --keystore or --key-file, not both")
    if args.key_file:
        try:
            with open(args.key_file, encoding="utf-8") as fh:
                text = fh.read(_MAX_KEY_FILE)
        except (OSError, UnicodeDecodeError) as exc:
            raise CliError(f"cannot read the key file {args.key_file}: {getattr(exc, 'strerror', None) or exc}") \
                from None
        from eth_account import Account

        return Signer(Account.from_key(parse_private_key(text)))
    if args.keystore:
        password = password_or_prompt(password_env, args.password_file, "--password-file",
                                      what=f"{role} keystore password",
                                      hint=f"set ${password_env} or pass --password-file FILE")
        return load_signer(Path(args.keystore), password)
    if required:
        raise CliError(f"this command signs with the {role}'s key", "pass --keystore FILE (password from "
                       f"${password_env} or --password-file) or, on a devnet, --key-file FILE")
    return None


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= 1")
    return int(text)


# -- config, detect, bench ---------------------------------------------------------------------------------


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


def _measure(out: Path, *, quick: bool) -> dict[str, Any]:
    """Benchmark this machine and write the attestation to `out` (shared by bench and register)."""
    from rich.console import Console

    from node.compute.bench import benchmark
    from node.compute.hardware import detect

    os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")  # CUDA indices = NVML indices, before torch loads
    with Console(stderr=True).status("benchmarking") as status:
        attestation = benchmark(detect(), quick=quick, progress=lambda msg: status.update(msg))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(attestation, indent=2) + "\n", encoding="utf-8")
    return attestation


def _bench(args: argparse.Namespace) -> int:
    from rich.console import Console

    from node.compute.bench import render

    out = args.out or _settings(args).node.data_dir / "bench.json"
    attestation = _measure(out, quick=args.quick)
    if args.json:
        print(json.dumps(attestation, indent=2))
    else:
        Console().print(render(attestation))
        print(f"attestation written to {out} (benchmarkHash {attestation['benchmark_hash']})")
    return 0


def _init(args: argparse.Namespace) -> int:
    from node.cli_init import init_command

    return init_command(args)


# -- run, register, withdraw -------------------------------------------------------------------------------


def _run(args: argparse.Namespace) -> int:
    from node.logs import setup_logging

    settings = _settings(args)
    setup_logging("debug" if args.debug else settings.node.log_level, settings.node.log_json)
    from node.service import run_node  # lazy: pulls in torch, aiohttp and the whole node

    return run_node(settings, debug=args.debug)


def _register(args: argparse.Namespace) -> int:
    from node.chain import provider as op
    from node.cli_view import local_api

    settings = _settings(args)
    decimals = settings.pricing.token_decimals
    payout = args.payout or settings.payout.address
    if not payout:
        raise CliError("no payout address", "pass --payout ADDRESS or set payout.address in the config; "
                       "earnings are paid there, so use a wallet you control (ideally a cold one)")
    stake = None if args.stake is None else token_units(args.stake, decimals, "--stake")
    price = (settings.pricing.price_per_gpu_second_units if args.price_floor is None
             else token_units(args.price_floor, decimals, "--price-floor"))
    endpoint = args.endpoint or settings.api.public_url or local_api(settings)
    if not (args.endpoint or settings.api.public_url) and settings.api.host in ("0.0.0.0", "::"):
        print(f"warning: advertising {endpoint}, which only this machine can reach; set api.public_url or pass "
              "--endpoint", file=sys.stderr)
    chain = op.connect(settings)  # configuration, chain and key problems surface before any benchmark
    signer = op.operator_signer(settings)
    bench = args.bench or settings.node.data_dir / "bench.json"
    if not bench.exists():
        if args.bench:
            raise CliError(f"no bench attestation at {bench}", "measure with `gpunode bench --out FILE`")
        print(f"no benchmark at {bench}: running a quick one (`gpunode bench` measures more thoroughly)")
        _measure(bench, quick=True)
    attestation = op.load_attestation(bench)
    capacity = op.capacity_from_attestation(attestation, op.detected_vram_mib(attestation))
    print(f"operator {signer.address} on chain {chain.deployment.chain_id}, registry {chain.deployment.registry}")
    print(f"capacity {capacity.gpu_model} x{capacity.device_count}: int8 {capacity.int8_tops_milli / 1000:g} TOPS, "
          f"bf16 {capacity.bf16_tflops_milli / 1000:g} TFLOPS (benchmark {attestation['benchmark_hash'][:18]}…)")
    want = op.Registration(payout=payout, capacity=capacity, price_floor=price, endpoint=endpoint)
    op.register_provider(chain, signer, want, stake_total=stake, token_decimals=decimals)
    return 0


def _withdraw(args: argparse.Namespace) -> int:
    from node.chain import provider as op

    settings = _settings(args)
    chain = op.connect(settings, max_fee_gwei=settings.payout.max_gas_gwei)
    signer = op.operator_signer(settings)
    payout = args.payout or op.payout_of(chain, signer.address, settings.payout.address)
    amount, step = op.withdraw_earnings(chain, signer, payout)
    if step is None:
        print(f"nothing to withdraw: {payout} has no earnings credited in the market {chain.deployment.market}")
        return 0
    print(f"withdrew {op.tokens(amount, settings.pricing.token_decimals)} tokens to {payout} — {step}")
    return 0


# -- status, jobs (the running node's HTTP API) ------------------------------------------------------------


def _status(args: argparse.Namespace) -> int:
    from node.cli_view import status_command

    return status_command(args)


def _jobs(args: argparse.Namespace) -> int:
    from node.cli_view import jobs_command

    return jobs_command(args)


# -- devnet, request, payout (commands with parsers of their own) ----------------------------------------


def _devnet(args: argparse.Namespace) -> int:
    """scripts/devnet.py's main, with the arguments after `devnet` (only in a source checkout)."""
    from node.chain.contracts import REPO_ROOT

    if (REPO_ROOT / "scripts" / "devnet.py").is_file() and str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))  # the console script's sys.path does not hold the checkout
    try:
        from scripts.devnet import main as devnet_main
    except ImportError:
        raise CliError("gpunode devnet needs a source checkout (scripts/devnet.py and the built contracts)",
                       "clone the repository and run `make devnet` there") from None
    saved, sys.argv[:1] = list(sys.argv), ["gpunode devnet"]  # the script's argparse names itself after argv[0]
    try:
        return devnet_main(list(args.devnet_args))
    except KeyboardInterrupt:  # Ctrl-C is how a devnet is stopped; anvil is already down (context manager)
        return 0
    finally:
        sys.argv[:] = saved


def _delegated(name: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        import importlib

        module, function = DELEGATED[name][1].split(":")
        rest = list(args.rest)
        if getattr(args, "debug", False) and "--debug" not in rest:  # `gpunode --debug payout` means it too
            rest.insert(0, "--debug")
        return getattr(importlib.import_module(module), function)(rest)

    return run


# -- parser and entry point --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from node.cli_keys import add_keys_parser
    from node.jobs.state import JobState

    parser = argparse.ArgumentParser(
        prog="gpunode",
        description="Provider node for decentralized GPU networks: your idle GPU runs signed jobs and gets paid.",
    )
    parser.add_argument("--version", action="version", version=f"gpunode {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks (and debug logs for run)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    debug = argparse.ArgumentParser(add_help=False)  # --debug also after the command name
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    conf = argparse.ArgumentParser(add_help=False, parents=[debug])
    conf.add_argument("--config", type=Path, metavar="FILE",
                      help="config.toml (default: $GPUNODE_CONFIG, else built-in defaults)")

    def command(name: str, text: str, *, parents: Sequence[argparse.ArgumentParser] = (conf,),
                **kw: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=text, description=kw.pop("description", text[0].upper() + text[1:] + "."),
                              parents=list(parents), allow_abbrev=False, **kw)

    init = command("init", "write a config.toml and create (or import) the node's key", parents=[debug])
    init.add_argument("--config", type=Path, metavar="PATH", help="config file to write (default: ./config.toml)")
    init.add_argument("--data-dir", type=Path, metavar="DIR", help="node.data_dir (default ~/.gpunode)")
    init.add_argument("--rpc", action="append", metavar="URL", help="chain.rpc_urls; repeat or comma-separate")
    init.add_argument("--chain-id", type=_positive, metavar="N", help="chain.chain_id (default 31337)")
    init.add_argument("--deployments", type=Path, metavar="FILE",
                      help="chain.deployments (default ./deployments/<chain id>.json)")
    init.add_argument("--payout", type=address_arg, metavar="ADDR", help="payout.address: where earnings go")
    init.add_argument("--keystore", type=Path, metavar="FILE", help="wallet.keystore: an existing keystore is "
                      "used as is, else the key is written there (default <data dir>/keystore.json)")
    init.add_argument("--import-key-file", type=Path, metavar="FILE",
                      help="import this key instead of generating one: a raw key (64 hex digits) or a v3 keystore")
    init.add_argument("--password-file", type=Path, metavar="FILE", help="wallet.password_file (else "
                      "$GPUNODE_WALLET_PASSWORD, else a prompt on a terminal)")
    init.add_argument("--non-interactive", action="store_true", help="never prompt; unset values keep defaults")
    init.add_argument("--force", action="store_true", help="replace an existing config file")
    init.set_defaults(func=_init)

    check = command("config", "validate a configuration file and show what it resolves to", parents=[debug])
    check.add_argument("config", nargs="?", type=Path, help="config.toml (default: $GPUNODE_CONFIG)")
    check.set_defaults(func=_config_check)

    detect = command("detect", "show the GPUs (or the CPU) this machine offers, with capacity", parents=[debug])
    detect.add_argument("--json", action="store_true", help="print JSON instead of a table")
    detect.set_defaults(func=_detect)

    bench = command("bench", "measure int8/bf16 throughput and write a capacity attestation")
    bench.add_argument("--out", type=Path, metavar="FILE", help="attestation file (default <data dir>/bench.json)")
    bench.add_argument("--quick", action="store_true", help="smaller matrices and fewer repetitions")
    bench.add_argument("--json", action="store_true", help="print the attestation as JSON")
    bench.set_defaults(func=_bench)

    add_keys_parser(sub, conf)

    reg = command("register", "register this provider on chain (or update its record) and stake")
    reg.add_argument("--bench", type=Path, metavar="FILE", help="capacity attestation (default <data dir>/"
                     "bench.json; measured quickly if missing)")
    reg.add_argument("--stake", type=amount_arg, metavar="AMOUNT",
                     help="total stake wanted, in whole tokens; only the missing part is staked")
    reg.add_argument("--price-floor", type=amount_arg, metavar="AMOUNT",
                     help="tokens per GPU-second (default pricing.price_per_gpu_second)")
    reg.add_argument("--endpoint", metavar="URL", help="API URL requesters use (default api.public_url, else "
                     "http://api.host:api.port)")
    reg.add_argument("--payout", type=address_arg, metavar="ADDR", help="earnings address (default payout.address)")
    reg.set_defaults(func=_register)

    command("run", "run the provider node (watch offers, claim, compute, prove, get paid)").set_defaults(func=_run)

    for name, text in (("status", "show the running node's health, devices, jobs and earnings"),
                       ("jobs", "list the running node's jobs")):
        cmd = command(name, text)
        cmd.add_argument("--json", action="store_true", help="print the API's JSON")
        cmd.add_argument("--url", metavar="URL", help="the node's API (default http://api.host:api.port)")
        cmd.set_defaults(func=_status if name == "status" else _jobs)
        if name == "jobs":
            cmd.add_argument("--state", choices=[s.value for s in JobState], metavar="STATE",
                             help=f"only jobs in this state: {', '.join(s.value for s in JobState)}")
            cmd.add_argument("--limit", type=_positive, metavar="N", help="at most N jobs, newest first")

    wd = command("withdraw", "move credited earnings from the market to the payout address")
    wd.add_argument("--payout", type=address_arg, metavar="ADDR", help="account to pay out (default: the registered "
                    "payout address, else payout.address)")
    wd.set_defaults(func=_withdraw)

    dev = sub.add_parser("devnet", add_help=False, help="start a local chain with the contracts deployed "
                         "(scripts/devnet.py; `gpunode devnet --help` for its options)")
    dev.set_defaults(func=_devnet, devnet_args=[])

    for name, (text, _) in DELEGATED.items():
        sub.add_parser(name, add_help=False, help=f"{text} (`gpunode {name} --help`)").set_defaults(
            func=_delegated(name), rest=[])
    return parser


def report_error(command: str, exc: BaseException, expected: tuple[type[BaseException], ...] = ()) -> str:
    """The one line (plus a hint line) an operator sees for a failed command. `expected`: more error classes
    whose message is written for the user (a command's own), besides the ones named in _EXPECTED."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    if isinstance(exc, ConfigError):
        problems = "\n".join(f"  {p}" for p in exc.problems)
        return (f"gpunode {command}: error: the configuration is invalid:\n{problems}\n"
                "hint: fix it and check with `gpunode config FILE`")
    if names & _EXPECTED or isinstance(exc, expected):
        hint = getattr(exc, "hint", "")
        prefix = "error: " if getattr(exc, "label", True) else ""
        return f"gpunode {command}: {prefix}{exc}" + (f"\nhint: {hint}" if hint else "")
    text = str(exc) or type(exc).__name__
    return (f"gpunode {command}: error: {type(exc).__name__}: {text}\n"
            "hint: this was not expected; rerun with --debug for the traceback and report it if it persists")


def run_guarded(command: str, call: Callable[[], int], *, debug: bool,
                expected: tuple[type[BaseException], ...] = (),
                on_error: Callable[[BaseException], None] | None = None) -> int:
    """Runs a command: Ctrl-C is exit 130, any failure one report (or, with --debug, the traceback) and exit 1."""
    try:
        return call()
    except KeyboardInterrupt:
        print(f"\ngpunode {command}: cancelled", file=sys.stderr)
        return 130
    except Exception as exc:
        if debug:
            traceback.print_exc()
        else:
            print(report_error(command, exc, expected), file=sys.stderr)
        if on_error is not None:
            on_error(exc)
        return 1


# A 32-byte hex value, alone or as --option=value: what a private key pasted onto the command line looks like.
_KEY_LIKE_ARG = re.compile(r"(?:-[\w-]*=)?(?:0x)?[0-9a-fA-F]{64}")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if ("keys" in argv or "init" in argv) and any(_KEY_LIKE_ARG.fullmatch(arg) for arg in argv):
        print("error: refusing a private key on the command line, where ps and shell history expose it; use "
              "`gpunode keys import --private-key-file FILE` or its hidden prompt", file=sys.stderr)
        return 2
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command in DELEGATED:  # everything after the command name belongs to its own parser
        args.rest = argv[argv.index(args.command) + 1:]
    elif extra and args.command != "devnet":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    if args.command == "devnet":
        args.devnet_args = extra
    if args.command != "run":
        from node.logs import setup_logging

        setup_logging("debug" if args.debug else "warning")
    return run_guarded(args.command, lambda: args.func(args), debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
