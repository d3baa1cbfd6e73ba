"""Contract ABIs (shipped inside the package) and forge artifacts (only in a source checkout).

The node reads only the exported ABIs in ``node/chain/abi/``, so an installed node never needs forge.
Deploying needs bytecode, which exists only where the contracts were built (``contracts/out``).
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

#: The contracts whose ABIs the Python side uses; ``make contracts`` exports exactly these.
EXPORTED_CONTRACTS = ("GpuToken", "ProviderRegistry", "JobMarket", "IWorkloadVerifier", "MatmulInt8Verifier",
                      "MediatorSet")

REPO_ROOT = Path(__file__).resolve().parents[2]
FORGE_OUT = REPO_ROOT / "contracts" / "out"


class ArtifactError(RuntimeError):
    """A contract artifact is missing or unreadable."""


@cache
def load_abi(name: str) -> list[dict[str, Any]]:
    """The ABI of one of EXPORTED_CONTRACTS, from the package data."""
    if name not in EXPORTED_CONTRACTS:
        raise ArtifactError(f"no exported ABI for {name!r}; known: {', '.join(EXPORTED_CONTRACTS)}")
    text = resources.files("node.chain").joinpath("abi", f"{name}.json").read_text(encoding="utf-8")
    return json.loads(text)


def forge_artifact(name: str, out_dir: Path = FORGE_OUT) -> dict[str, Any]:
    """forge's build artifact for ``src/<name>.sol:<name>`` (ABI and creation bytecode)."""
    path = out_dir / f"{name}.sol" / f"{name}.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"{path} not found: build the contracts first (make contracts)") from None
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path} is not valid JSON: {exc}") from None
    bytecode = data.get("bytecode", {}).get("object", "")
    if not isinstance(bytecode, str) or len(bytecode) < 4:
        raise ArtifactError(f"{path} has no creation bytecode")
    return {"abi": data["abi"], "bytecode": bytecode}


@cache
def _error_selectors() -> dict[bytes, tuple[str, list[str]]]:
    from eth_utils import function_signature_to_4byte_selector

    table: dict[bytes, tuple[str, list[str]]] = {}
    for contract in EXPORTED_CONTRACTS:
        for item in load_abi(contract):
            if item.get("type") == "error":
                types = [_abi_type(i) for i in item["inputs"]]
                sig = f"{item['name']}({','.join(types)})"
                table[function_signature_to_4byte_selector(sig)] = (item["name"], types)
    return table


def _abi_type(item: dict[str, Any]) -> str:
    if item["type"].startswith("tuple"):
        return "(" + ",".join(_abi_type(c) for c in item["components"]) + ")" + item["type"][5:]
    return item["type"]


def decode_revert(data: bytes | str) -> str:
    """Human-readable form of revert data, e.g. ``InsufficientFreeStake(10, 3)``, using the custom errors
    of every exported contract (and OpenZeppelin's, which they inherit). Unknown data is shown as hex."""
    from eth_abi import decode

    raw = bytes.fromhex(data[2:] if data.startswith("0x") else data) if isinstance(data, str) else bytes(data)
    if raw[:4] == bytes.fromhex("08c379a0"):  # Error(string)
        return f"Error({decode(['string'], raw[4:])[0]!r})"
    known = _error_selectors().get(raw[:4])
    if known is None:
        return "0x" + raw.hex()
    name, types = known
    try:
        args = decode(types, raw[4:])
    except Exception:  # malformed arguments: still name the error
        return f"{name}(<undecodable>)"
    shown = [("0x" + a.hex()) if isinstance(a, bytes) else str(a) for a in args]
    return f"{name}({', '.join(shown)})"


@cache
def _function(contract: str, name: str) -> tuple[bytes, list[str], list[str]]:
    """Selector, input types and output types of one function (none of the exported ones is overloaded)."""
    found = [i for i in load_abi(contract) if i["type"] == "function" and i["name"] == name]
    if len(found) != 1:
        raise ValueError(f"{contract}.{name}: {len(found)} functions of that name")
    ins, outs = [_abi_type(i) for i in found[0]["inputs"]], [_abi_type(o) for o in found[0]["outputs"]]
    from eth_utils import function_signature_to_4byte_selector

    return function_signature_to_4byte_selector(f"{name}({','.join(ins)})"), ins, outs


def view_calldata(contract: str, function: str, *args: Any) -> bytes:
    """Call data for a read on a hot path, encoded by eth-abi straight from the argument types. web3's contract
    layer validates the whole ABI on each call (about 2 ms of CPU, which capped direct offers near 130/s);
    this takes exact types: checksummed or lower-case addresses, bytes, ints, tuples."""
    from eth_abi import encode

    selector, ins, _ = _function(contract, function)
    return selector + encode(ins, list(args))


def view_result(contract: str, function: str, raw: bytes) -> tuple[Any, ...]:
    """The decoded return values of ``function`` from an ``eth_call``'s raw answer."""
    from eth_abi import decode

    return decode(_function(contract, function)[2], bytes(raw))


@cache
def _encoder(name: str) -> Any:
    from web3 import Web3

    return Web3().eth.contract(abi=load_abi(name))


def calldata(contract: str, function: str, *args: Any) -> bytes:
    """ABI-encoded call data for one of EXPORTED_CONTRACTS, for the transaction manager (which takes bytes)."""
    encoded = _encoder(contract).encode_abi(function, list(args))
    return bytes.fromhex(encoded[2:])
