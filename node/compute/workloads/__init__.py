"""Registry of the workloads a provider can run, keyed the way offers name them on-chain.

An offer names its workload by ``keccak256("name/version")`` so that the contracts never deal with
strings; the node maps that id back to code here. Params arrive as raw bytes from the offer and are
validated strictly before anything is priced or scheduled, because they are attacker-controlled.

Importing this package must stay cheap and torch-free: the node's main process validates and prices
offers, while ``run`` executes inside a worker process (``execute`` is its entry point) where torch is
already imported. Workload modules therefore import torch inside the functions that need it.
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from eth_utils import keccak

MAX_PARAMS_BYTES = 4096
MAX_JSON_DEPTH = 64
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_JSON_BRACKET = re.compile(r"[\[\]{}]")


class ParamsError(ValueError):
    """Offer params that this node refuses; ``reason`` is safe to report back to the requester."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class VerificationError(RuntimeError):
    """A computed result failed its self-check; the job must fail rather than publish it."""


class WorkloadError(RuntimeError):
    """The job's input or program is unusable (bad bundle, wrong shapes); the job fails."""


@dataclass(frozen=True)
class Estimate:
    """Resource needs derived from params alone, for pricing and scheduling before running.

    ``None`` means the quantity is not knowable from the params (it depends on the input).
    """

    flops: int | None = None
    int_ops: int | None = None
    output_bytes: int | None = None
    vram_bytes: int | None = None


def workload_id(name: str) -> bytes:
    """The on-chain id of a workload: keccak256 of its UTF-8 ``name/version``."""
    return keccak(text=name)


class Workload(ABC):
    """One kind of job. Subclasses set ``name`` ("name/version"); ``id`` follows from it."""

    name: str

    @property
    def id(self) -> bytes:
        return workload_id(self.name)

    def validate_params(self, params: bytes) -> dict[str, Any]:
        """Parse offer params (a UTF-8 JSON object) and check them; raises ``ParamsError``."""
        return self.check_params(parse_params_json(params))

    @abstractmethod
    def check_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """Check already-parsed params against the schema and return the normalised dict."""

    @abstractmethod
    def estimate(self, params: dict[str, Any]) -> Estimate:
        """Resource estimate for validated params."""

    @abstractmethod
    def run(self, params: dict[str, Any], input_path: str | None, output_path: str, device: str) -> dict[str, Any]:
        """Run in a worker process: write ``output_path`` and return a small JSON-able summary."""


def _reject_constant(token: str) -> Any:
    raise ParamsError(f"non-finite number {token} not allowed")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ParamsError(f"duplicate key {key!r}")
        out[key] = value
    return out


def json_depth(text: str) -> int:
    """Nesting depth of a JSON text, found without recursion.

    ``json.loads`` recurses in C once per level; with a raised recursion limit a hostile document can
    overflow the C stack and kill the process, so depth is bounded before parsing.
    """
    depth = deepest = 0
    for m in _JSON_BRACKET.finditer(_JSON_STRING.sub('""', text)):
        depth += 1 if m.group() in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def parse_params_json(params: bytes) -> dict[str, Any]:
    """Strict JSON object parsing: UTF-8, bounded size, no duplicate keys, no NaN/Infinity."""
    if not isinstance(params, bytes | bytearray):
        raise ParamsError("params must be bytes")
    if len(params) > MAX_PARAMS_BYTES:
        raise ParamsError(f"params longer than {MAX_PARAMS_BYTES} bytes")
    try:
        text = bytes(params).decode("utf-8")
        if json_depth(text) > MAX_JSON_DEPTH:
            raise ParamsError(f"params nest deeper than {MAX_JSON_DEPTH} levels")
        value = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except UnicodeDecodeError as e:
        raise ParamsError("params are not valid UTF-8") from e
    except json.JSONDecodeError as e:
        raise ParamsError(f"params are not valid JSON: {e.msg}") from e
    if not isinstance(value, dict):
        raise ParamsError("params must be a JSON object")
    return value


def require_keys(params: dict[str, Any], required: set[str], optional: set[str] | frozenset[str] = frozenset()) -> None:
    """Reject unknown and missing keys; shared by the workload schemas."""
    unknown = sorted(set(params) - required - optional)
    if unknown:
        raise ParamsError(f"unknown key(s): {', '.join(unknown)}")
    missing = sorted(required - set(params))
    if missing:
        raise ParamsError(f"missing key(s): {', '.join(missing)}")


def require_int(params: dict[str, Any], key: str, low: int, high: int) -> int:
    """An integer (not a bool, not a float) with ``low <= value <= high``."""
    value = params[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ParamsError(f"{key} must be an integer")
    if not low <= value <= high:
        raise ParamsError(f"{key} out of range [{low}, {high}]")
    return value


def save_safetensors(tensors: dict[str, Any], path: str, metadata: dict[str, str] | None = None) -> None:
    """Write tensors as a safetensors file, from any device and layout (outputs may be CUDA or strided)."""
    from safetensors.torch import save_file

    save_file({name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}, path, metadata=metadata)


_BY_ID: dict[bytes, Workload] = {}
_BY_NAME: dict[str, Workload] = {}


def _registry() -> tuple[dict[bytes, Workload], dict[str, Workload]]:
    # Loaded on first use so that the workload modules can import the base classes above.
    if not _BY_NAME:
        from node.compute.workloads.matmul_int8 import MatmulInt8
        from node.compute.workloads.torch_export import TorchExport

        for workload in (MatmulInt8(), TorchExport()):
            _BY_NAME[workload.name] = workload
            _BY_ID[workload.id] = workload
    return _BY_ID, _BY_NAME


def get(workload: bytes | str) -> Workload:
    """Look a workload up by 32-byte id, by ``0x``-hex id, or by ``name/version``; ``KeyError`` if unknown."""
    by_id, by_name = _registry()
    if isinstance(workload, bytes | bytearray):
        found = by_id.get(bytes(workload))
    elif workload.startswith("0x") and len(workload) == 66:
        try:
            found = by_id.get(bytes.fromhex(workload[2:]))
        except ValueError:
            found = None
    else:
        found = by_name.get(workload)
    if found is None:
        raise KeyError(f"unknown workload {workload!r}")
    return found


def all_workloads() -> list[Workload]:
    """Every registered workload, in a stable order."""
    return sorted(_registry()[1].values(), key=lambda w: w.name)


def execute(
    device: str, workload: str, params: dict[str, Any], input_path: str | None, output_path: str
) -> dict[str, Any]:
    """Worker-process entry point (``node.compute.workloads:execute``).

    Params are checked again here because the worker must not trust what crossed the process boundary.
    """
    w = get(workload)
    return w.run(w.check_params(dict(params)), input_path, output_path, device)
