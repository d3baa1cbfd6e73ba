"""Node settings: one typed, validated, immutable snapshot taken at start-up.

A provider node spends gas and posts bonds, so a typo in its configuration must stop it before it
touches the chain rather than surface hours later as a reverted transaction or a silently ignored
option. Every problem is collected and reported at once, so an operator can fix the file in one pass.

Sources, lowest to highest precedence: the built-in defaults (the section dataclasses below are the
only place where keys and defaults are defined), the TOML file, then environment variables named
``GPUNODE_<SECTION>_<KEY>`` (e.g. ``GPUNODE_CHAIN_RPC_URLS=http://a,http://b``). Unknown ``GPUNODE_*``
variables are rejected too, except the non-setting ones in ``NON_SETTING_ENV_VARS``.

All paths in a loaded ``Settings`` are absolute: relative paths from the file are anchored at the
file's directory, others at the working directory at load time, so a later chdir cannot retarget them.
"""

from __future__ import annotations

import copy
import difflib
import math
import os
import re
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from decimal import Decimal, localcontext
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ENV_PREFIX = "GPUNODE_"
ENV_CONFIG = "GPUNODE_CONFIG"  # path of the TOML file when load_settings() gets none
ENV_WALLET_PASSWORD = "GPUNODE_WALLET_PASSWORD"  # keystore password; never stored in Settings
ENV_PAYOUT_PASSWORD = "GPUNODE_PAYOUT_PASSWORD"  # the hot payout keystore's password (node.payout); likewise
ENV_REQUESTER_PASSWORD = "GPUNODE_REQUESTER_PASSWORD"  # the requester tools' keystore (node.requester); likewise
ENV_MEDIATOR_PASSWORD = "GPUNODE_MEDIATOR_PASSWORD"  # a mediator's keystore (node.mediator); likewise
NON_SETTING_ENV_VARS = frozenset({ENV_CONFIG, ENV_WALLET_PASSWORD, ENV_PAYOUT_PASSWORD, ENV_REQUESTER_PASSWORD,
                                  ENV_MEDIATOR_PASSWORD})


class ConfigError(ValueError):
    """Invalid configuration; ``problems`` holds one human-readable line per problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


# --------------------------------------------------------------------------------------------------
# Field specs: how a raw TOML value (or an environment string) becomes a typed, checked value.


class _Bad(Exception):
    """args: (where, problem, got) triples; `where` is a list index suffix like "[2]" or ""."""


@dataclass(frozen=True)
class _Spec:
    expect: str  # completes "must be ...", shown to the operator
    ok: Callable[[Any], Any]  # is the raw TOML value acceptable?
    conv: Callable[[Any], Any] = lambda v: v  # raw -> typed; may also raise ValueError etc.
    parse_env: Callable[[str], Any] = str  # best effort: a string it cannot parse goes through as-is
    is_path: bool = False

    def convert(self, value: Any) -> Any:
        try:
            if self.ok(value):
                return self.conv(value)
        except (ValueError, TypeError, ArithmeticError):
            pass
        raise _Bad(("", f"must be {self.expect}", value))


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)  # TOML true must not pass as 1


def _lenient(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """Environment strings that do not parse pass through, so the validator reports them verbatim."""

    def run(s: str) -> Any:
        try:
            return parse(s.strip())
        except (ValueError, KeyError):
            return s

    return run


def _int(lo: int, hi: int | None = None) -> _Spec:
    expect = f"an integer >= {lo}" if hi is None else f"an integer in {lo}..{hi}"
    return _Spec(expect, lambda v: _is_int(v) and lo <= v and (hi is None or v <= hi),
                 parse_env=_lenient(int))


def _float(lo: float, hi: float | None = None, *, lo_open: bool = False) -> _Spec:
    expect = f"a number {'>' if lo_open else '>='} {lo:g}" + ("" if hi is None else f" and <= {hi:g}")
    return _Spec(expect, lambda v: (_is_int(v) or isinstance(v, float)) and math.isfinite(v)
                 and (v > lo if lo_open else v >= lo) and (hi is None or v <= hi), float, _lenient(float))


_BOOL_WORDS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
_BOOL = _Spec("true or false (the environment also takes 1/0/yes/no)", lambda v: isinstance(v, bool),
              parse_env=_lenient(lambda s: _BOOL_WORDS[s.lower()]))


def _str(expect: str, ok: Callable[[str], Any], conv: Callable[[str], Any] = str) -> _Spec:
    return _Spec(expect, lambda v: isinstance(v, str) and ok(v), conv)


def _choice(*options: str) -> _Spec:
    return _str(f"one of {', '.join(options)}", lambda s: s.lower() in options, str.lower)


def _url(*schemes: str, empty_ok: bool = False) -> _Spec:
    def ok(s: str) -> bool:
        u = urlsplit(s)
        _ = u.port  # raises ValueError for a malformed port
        return u.scheme in schemes and bool(u.hostname) and not any(c.isspace() for c in s)

    expect = ("empty or " if empty_ok else "") + f"a URL ({' or '.join(f'{s}://' for s in schemes)})"
    return _str(expect, lambda s: (empty_ok and s == "") or ok(s))


# Addresses are stored lower-case: checksum validation needs keccak, which the stdlib lacks, and one
# canonical form keeps allow/deny comparisons against on-chain data trivially correct.
def _address(empty_ok: bool = False) -> _Spec:
    expect = ("empty or " if empty_ok else "") + "a 0x-prefixed address of 40 hex digits"
    return _str(expect, lambda s: (empty_ok and s == "") or re.fullmatch(r"0x[0-9a-fA-F]{40}", s), str.lower)


def _path(empty_ok: bool = False) -> _Spec:
    return _Spec(("empty or " if empty_ok else "") + "a file system path",
                 lambda v: isinstance(v, str) and "\0" not in v and (v or empty_ok),
                 lambda v: Path(v) if v else None, is_path=True)


def _decimal_conv(v: str | int) -> Decimal:
    d = Decimal(str(v).strip())
    if not (d.is_finite() and d >= 0):
        raise ValueError
    return d


# Floats are refused: 0.1 in TOML is already rounded before we see it, a quoted string is exact.
_DECIMAL = _Spec('a decimal amount >= 0 written as a quoted string, e.g. "0.5"',
                 lambda v: isinstance(v, str) or _is_int(v), _decimal_conv)
_OPT_BLOCK = _Spec('"" (start at the chain head) or a block number >= 0',
                   lambda v: v == "" or (_is_int(v) and v >= 0), lambda v: None if v == "" else v,
                   _lenient(lambda s: int(s) if s else ""))


def _list(item: _Spec, *, nonempty: bool = False, check: Callable[[tuple], Any] = lambda t: None) -> _Spec:
    """A list whose items are each checked, reporting every bad item rather than the first."""
    expect = ("a non-empty list" if nonempty else "a list") + f", each item {item.expect}"

    def conv(v: list) -> tuple:
        out, bad = [], []
        for i, x in enumerate(v):
            try:
                out.append(item.convert(x))
            except _Bad as e:
                bad.extend((f"[{i}]", p, g) for _, p, g in e.args)
        if bad:
            raise _Bad(*bad)
        if problem := check(tuple(out)):
            raise _Bad(("", problem, v))
        return tuple(out)

    return _Spec(expect, lambda v: isinstance(v, list) and (v or not nonempty), conv,
                 lambda s: [item.parse_env(p.strip()) for p in s.split(",") if p.strip()])


def _is_device(v: Any) -> Any:
    return (_is_int(v) and v >= 0) or (isinstance(v, str) and (v == "all" or re.fullmatch(r"GPU-\S+", v)))


_DEVICES = _list(
    _Spec('"all", a device index >= 0 or a "GPU-..." UUID', _is_device, parse_env=_lenient(int)),
    nonempty=True,  # "all" makes any other entry meaningless, so mixing them is surely a mistake:
    check=lambda t: 'must be ["all"] alone or a list without "all"' if "all" in t and len(t) > 1 else None,
)
_WORKLOAD = _str('a workload id "name/vN", e.g. "matmul-int8/v1"',
                 lambda s: re.fullmatch(r"[a-z0-9][a-z0-9._-]*/v[0-9]+", s))
_LABEL = _str("a label of at most 64 printable characters", lambda s: len(s) <= 64 and s.isprintable())
_HOST = _str("a host name or IP address", lambda s: 0 < len(s) <= 253 and not any(c.isspace() for c in s))
_HTTP = ("http", "https")


# Another GPUNODE_* name would collide with the settings' own variables, which reject unknown names.
def _env_name(own: str) -> _Spec:
    return _str(f"an environment variable name (letters, digits, _), not starting with {ENV_PREFIX} "
                f"unless it is {own}",
                lambda s: re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", s) and (not s.startswith(ENV_PREFIX) or s == own))


_ENV_NAME = _env_name(ENV_WALLET_PASSWORD)


def _opt(raw: Any, spec: _Spec) -> Any:
    """Declare a key: `raw` is its default exactly as it would be written in TOML."""
    return field(default=spec.convert(raw), metadata={"raw": raw, "spec": spec})


# --------------------------------------------------------------------------------------------------
# The settings, one frozen dataclass per TOML section. Documentation of each key lives in
# config.example.toml, which the tests keep in lockstep with these tables.


@dataclass(frozen=True)
class NodeSettings:
    """Local state and operator-facing output."""

    data_dir: Path = _opt("~/.gpunode", _path())
    log_level: str = _opt("info", _choice("debug", "info", "warning", "error"))
    log_json: bool = _opt(False, _BOOL)
    name: str = _opt("", _LABEL)
    shutdown_grace_s: float = _opt(300.0, _float(0, 86400))


@dataclass(frozen=True)
class ChainSettings:
    """How the node reaches the chain and how careful it is with transactions."""

    chain_id: int = _opt(31337, _int(1))
    rpc_urls: tuple[str, ...] = _opt(["http://127.0.0.1:8545"], _list(_url(*_HTTP), nonempty=True))
    ws_url: str = _opt("", _url("ws", "wss", empty_ok=True))
    deployments: Path = _opt("deployments/31337.json", _path(empty_ok=True))  # "" -> by chain_id
    confirmations: int = _opt(1, _int(0, 64))
    poll_interval_s: float = _opt(2.0, _float(0, 60, lo_open=True))
    request_timeout_s: float = _opt(10.0, _float(0, 300, lo_open=True))
    max_fee_gwei: float = _opt(200.0, _float(0, lo_open=True))
    priority_fee_gwei: float = _opt(1.0, _float(0))
    bump_after_blocks: int = _opt(3, _int(1, 1000))
    reorg_depth: int = _opt(64, _int(1, 1024))
    start_block: int | None = _opt("", _OPT_BLOCK)


@dataclass(frozen=True)
class WalletSettings:
    """Where the signing key lives. The password itself never enters Settings (see
    read_wallet_password): it comes from the variable named by `password_env` or from `password_file`."""

    keystore: Path | None = _opt("", _path(empty_ok=True))
    password_file: Path | None = _opt("", _path(empty_ok=True))
    password_env: str = _opt(ENV_WALLET_PASSWORD, _ENV_NAME)


@dataclass(frozen=True)
class HardwareSettings:
    """Which devices the node may use and when, so it can share a machine with its owner."""

    devices: tuple[int | str, ...] = _opt(["all"], _DEVICES)
    allow_cpu: bool = _opt(True, _BOOL)
    idle_only: bool = _opt(False, _BOOL)
    idle_utilization_pct: int = _opt(10, _int(0, 100))
    idle_seconds: int = _opt(60, _int(0, 86400))
    gpu_memory_fraction: float = _opt(0.9, _float(0, 1, lo_open=True))
    cpu_worker_memory_mb: int = _opt(4096, _int(256))
    job_timeout_s: float = _opt(3600.0, _float(0, 7 * 86400, lo_open=True))
    queue_per_device: int = _opt(4, _int(1, 1000))
    worker_idle_s: float = _opt(600.0, _float(0, 7 * 86400))


@dataclass(frozen=True)
class PricingSettings:
    """What the node asks for its work; amounts are in whole tokens, as humans think of them."""

    token_decimals: int = _opt(18, _int(0, 36))
    price_per_gpu_second: Decimal = _opt("0.0001", _DECIMAL)
    electricity_price_per_kwh: Decimal = _opt("0", _DECIMAL)
    min_margin_pct: float = _opt(10.0, _float(0, 1000))
    min_job_seconds: float = _opt(1.0, _float(0, 86400))
    assumed_job_seconds: float = _opt(60.0, _float(0, 7 * 86400, lo_open=True))
    device_watts: float = _opt(0.0, _float(0, 100000))

    @property
    def price_per_gpu_second_units(self) -> int:
        """The price as contracts see it: an integer count of the token's smallest unit."""
        return to_base_units(self.price_per_gpu_second, self.token_decimals)


@dataclass(frozen=True)
class PolicySettings:
    """Which jobs the node accepts at all, independent of price."""

    workloads: tuple[str, ...] = _opt(["matmul-int8/v1", "torch-export/v1"], _list(_WORKLOAD, nonempty=True))
    allow_requesters: tuple[str, ...] = _opt([], _list(_address()))
    deny_requesters: tuple[str, ...] = _opt([], _list(_address()))
    max_input_bytes: int = _opt(1073741824, _int(1))
    input_timeout_s: float = _opt(300.0, _float(0, 86400, lo_open=True))
    allow_file_inputs: bool = _opt(False, _BOOL)
    allow_private_inputs: bool = _opt(False, _BOOL)
    deadline_margin_pct: float = _opt(25.0, _float(0, 1000))
    max_bond: Decimal = _opt("0", _DECIMAL)  # 0 = no limit


@dataclass(frozen=True)
class ApiSettings:
    """The node's HTTP endpoint for requesters and monitoring."""

    enabled: bool = _opt(True, _BOOL)
    host: str = _opt("127.0.0.1", _HOST)
    port: int = _opt(8600, _int(1, 65535))
    public_url: str = _opt("", _url(*_HTTP, empty_ok=True))
    signature_window_s: int = _opt(120, _int(5, 3600))


@dataclass(frozen=True)
class PayoutSettings:
    """Where earnings go, how much ETH stays behind to keep paying for gas, and the hot key that
    `gpunode payout` (node/payout) moves them with."""

    address: str = _opt("", _address(empty_ok=True))
    withdraw_threshold: Decimal = _opt("0", _DECIMAL)
    sweep_to: str = _opt("", _address(empty_ok=True))
    sweep_threshold: Decimal = _opt("0", _DECIMAL)
    gas_reserve_eth: Decimal = _opt("0.05", _DECIMAL)
    max_gas_gwei: float = _opt(100.0, _float(0, lo_open=True))
    # Its password, like the wallet's, never enters Settings: node.payout.keys reads it when needed.
    keystore: Path | None = _opt("", _path(empty_ok=True))
    password_env: str = _opt(ENV_PAYOUT_PASSWORD, _env_name(ENV_PAYOUT_PASSWORD))
    password_file: Path | None = _opt("", _path(empty_ok=True))


@dataclass(frozen=True)
class Settings:
    """Everything configurable, grouped as in the TOML file.

    ``Settings()`` holds the defaults as declared (e.g. data_dir still "~/.gpunode"); use
    default_settings() or load_settings() for the normalised form the node should run with.
    """

    node: NodeSettings = field(default_factory=NodeSettings)
    chain: ChainSettings = field(default_factory=ChainSettings)
    wallet: WalletSettings = field(default_factory=WalletSettings)
    hardware: HardwareSettings = field(default_factory=HardwareSettings)
    pricing: PricingSettings = field(default_factory=PricingSettings)
    policy: PolicySettings = field(default_factory=PolicySettings)
    api: ApiSettings = field(default_factory=ApiSettings)
    payout: PayoutSettings = field(default_factory=PayoutSettings)


_SECTIONS: dict[str, type] = {f.name: f.default_factory for f in fields(Settings)}  # type: ignore[misc]
_ENV_NAMES = {
    f"{ENV_PREFIX}{sec.upper()}_{f.name.upper()}": f"{sec}.{f.name}"
    for sec, cls in _SECTIONS.items()
    for f in fields(cls)
}
_TOKEN_AMOUNTS = ("pricing.price_per_gpu_second", "policy.max_bond", "payout.withdraw_threshold",
                  "payout.sweep_threshold")


def raw_defaults() -> dict[str, dict[str, Any]]:
    """The defaults as TOML values, so config.example.toml can be checked against the source of truth."""
    return {sec: {f.name: copy.deepcopy(f.metadata["raw"]) for f in fields(cls)}
            for sec, cls in _SECTIONS.items()}


def to_base_units(amount: Decimal, decimals: int) -> int:
    """Contracts take integers in the token's smallest unit; refuse amounts that would be rounded."""
    with localcontext() as ctx:
        ctx.prec = 200
        scaled = amount.scaleb(decimals)
    if scaled != scaled.to_integral_value():
        raise ValueError(f"{amount} has more than {decimals} decimal places")
    return int(scaled)


# --------------------------------------------------------------------------------------------------
# Loading.


def _hint(name: str, known: Any, *, list_known: bool = True, cutoff: float = 0.6) -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=cutoff)
    if close:
        return f" (did you mean {close[0]}?)"
    return f"; expected one of: {', '.join(sorted(known))}" if list_known else ""


def _read_file(path: Path, raw: dict[str, tuple[Any, str, Path]], via: str) -> list[str]:
    src = str(path)
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as e:
        return [f"{src}: cannot read config file{via}: {e.strerror or e}"]
    except tomllib.TOMLDecodeError as e:
        return [f"{src}: invalid TOML: {e}"]
    base = path.expanduser().absolute().parent
    problems = []
    for sec, table in data.items():
        if sec not in _SECTIONS:
            problems.append(f"{src}: {sec}: unknown section{_hint(sec, _SECTIONS)}")
        elif not isinstance(table, dict):
            problems.append(f"{src}: {sec}: must be a table [{sec}], got {table!r}")
        else:
            known = {f.name for f in fields(_SECTIONS[sec])}
            for key, value in table.items():
                if key in known:
                    raw[f"{sec}.{key}"] = (value, src, base)
                else:
                    problems.append(f"{src}: {sec}.{key}: unknown key{_hint(key, known)}")
    return problems


def _read_env(env: Mapping[str, str], raw: dict[str, tuple[Any, str, Path]]) -> list[str]:
    problems = []
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or name in NON_SETTING_ENV_VARS:
            continue
        dotted = _ENV_NAMES.get(name)
        if dotted is None:
            hint = _hint(name, _ENV_NAMES, list_known=False, cutoff=0.85)  # the shared prefix inflates scores
            problems.append(f"env {name}: unknown variable, settings are {ENV_PREFIX}<SECTION>_<KEY>{hint}")
            continue
        sec, key = dotted.split(".")
        spec = _SECTIONS[sec].__dataclass_fields__[key].metadata["spec"]
        raw[dotted] = (spec.parse_env(env[name]), f"env {name}", Path.cwd())
    return problems


def _cross_checks(v: dict[str, Any]) -> Iterator[tuple[tuple[str, ...], str, Any]]:
    """Rules spanning several keys; a rule is skipped when one of its keys already failed on its own."""

    fee, cap = v.get("chain.priority_fee_gwei"), v.get("chain.max_fee_gwei")
    if fee is not None and cap is not None and fee > cap:
        keys = ("chain.priority_fee_gwei", "chain.max_fee_gwei")
        yield keys, f"must be <= chain.max_fee_gwei ({cap:g})", fee
    decimals = v.get("pricing.token_decimals")
    amounts = [((k, "pricing.token_decimals"), decimals, "pricing.token_decimals") for k in _TOKEN_AMOUNTS]
    for keys, places, why in amounts + [(("payout.gas_reserve_eth",), 18, "ETH has 18")]:
        if places is not None and keys[0] in v:
            try:
                to_base_units(v[keys[0]], places)
            except ValueError:
                yield keys, f"must have at most {places} decimal places ({why})", str(v[keys[0]])
    both = set(v.get("policy.allow_requesters", ())) & set(v.get("policy.deny_requesters", ()))
    for addr in sorted(both):
        yield (("policy.deny_requesters", "policy.allow_requesters"),
               "must not repeat an address of policy.allow_requesters", addr)


def load_settings(path: Path | str | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Read, merge and validate the configuration once; raise ConfigError listing every problem.

    `path` None means the file named by $GPUNODE_CONFIG, or defaults only when that is unset too.
    """
    env = os.environ if env is None else env
    via = ""
    if path is None and env.get(ENV_CONFIG):
        path, via = env[ENV_CONFIG], f" (named by {ENV_CONFIG})"
    raw: dict[str, tuple[Any, str, Path]] = {}
    problems = [] if path is None else _read_file(Path(path).expanduser(), raw, via)
    problems += _read_env(env, raw)

    cwd = Path.cwd()
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    bases: dict[str, Path] = {}
    for sec, cls in _SECTIONS.items():
        for f in fields(cls):
            dotted = f"{sec}.{f.name}"
            value, src, base = raw.get(dotted, (copy.deepcopy(f.metadata["raw"]), "defaults", cwd))
            spec: _Spec = f.metadata["spec"]
            try:
                out = spec.convert(value)
                if spec.is_path and out is not None:
                    out = base / out.expanduser()  # no-op join when already absolute
            except _Bad as bad:
                problems.extend(f"{src}: {dotted}{w}: {p}, got {g!r}" for w, p, g in bad.args)
                continue
            except RuntimeError as e:  # expanduser without a resolvable home directory
                problems.append(f"{src}: {dotted}: cannot expand '~': {e}")
                continue
            values[dotted], sources[dotted], bases[dotted] = out, src, base

    if values.get("chain.deployments", "") is None and "chain.chain_id" in values:  # "" -> by chain id
        name = f"deployments/{values['chain.chain_id']}.json"
        values["chain.deployments"] = bases["chain.deployments"] / name

    for keys, problem, got in _cross_checks(values):
        src = next((sources[k] for k in keys if sources.get(k, "defaults") != "defaults"), "defaults")
        problems.append(f"{src}: {keys[0]}: {problem}, got {got!r}")

    if problems:
        raise ConfigError(problems)
    return Settings(**{
        sec: cls(**{f.name: values[f"{sec}.{f.name}"] for f in fields(cls)}) for sec, cls in _SECTIONS.items()
    })


def default_settings() -> Settings:
    """The built-in defaults, normalised exactly as a loaded file would be (paths made absolute)."""
    return load_settings(None, env={})


def read_wallet_password(settings: Settings, env: Mapping[str, str] | None = None) -> str | None:
    """Fetch the keystore password only when needed, so it never lives in Settings, its repr or logs.

    The variable named by wallet.password_env ($GPUNODE_WALLET_PASSWORD by default) wins over
    wallet.password_file; None means neither is set.
    """
    return read_password(settings.wallet.password_env, settings.wallet.password_file, "wallet.password_file", env)


def read_password(variable: str, file: Path | str | None, label: str,
                  env: Mapping[str, str] | None = None) -> str | None:
    """A password from $`variable`, else from the first line of `file` (`label` names it in errors), else None.

    Shared by every key the tools unlock (the node's wallet, the payout key, the requester's keystore).
    """
    env = os.environ if env is None else env
    if variable in env:
        return env[variable]
    if file is None:
        return None
    try:
        return Path(file).read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as e:
        raise ConfigError([f"{file}: {label}: cannot read: {e.strerror or e}"]) from None
