"""The deployments file: which contracts, at which addresses, on which chain, from which block.

It is the node's only source of contract addresses, so it is validated strictly: a wrong chain id or a
malformed address must stop the node at start, not send a claim to the wrong contract.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from eth_utils import is_address, to_checksum_address

from node.files import write_atomic

CONTRACT_KEYS = ("token", "registry", "market")
OPTIONAL_KEYS = ("verifier", "mediator_set")


class DeploymentError(ValueError):
    """The deployments file is missing, malformed, or for another chain."""


@dataclass(frozen=True)
class Deployment:
    chain_id: int
    token: str
    registry: str
    market: str
    deploy_block: int
    #: MatmulInt8Verifier (fraud proofs for matmul-int8/v1); None in files written before it existed.
    verifier: str | None = None
    #: MediatorSet, when the market's arbiter is an M-of-N mediator panel.
    mediator_set: str | None = None

    def to_json(self) -> str:
        data = {k: v for k, v in asdict(self).items() if v is not None or k not in OPTIONAL_KEYS}
        return json.dumps(data, indent=2) + "\n"


def default_path(chain_id: int, root: Path = Path("deployments")) -> Path:
    return root / f"{chain_id}.json"


def load_deployment(path: Path, expected_chain_id: int | None = None) -> Deployment:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DeploymentError(f"{path}: not found (deploy first: make devnet, or scripts/deploy.py)") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise DeploymentError(f"{path}: unreadable: {exc}") from None
    if not isinstance(data, dict):
        raise DeploymentError(f"{path}: must hold a JSON object")
    problems = []
    unknown = set(data) - {"chain_id", "deploy_block", *CONTRACT_KEYS, *OPTIONAL_KEYS}
    if unknown:
        problems.append(f"unknown keys {sorted(unknown)}")
    for key in ("chain_id", "deploy_block"):
        value = data.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            problems.append(f"{key}: must be a non-negative integer, got {value!r}")
    for key in CONTRACT_KEYS:
        value = data.get(key)
        if not isinstance(value, str) or not is_address(value):
            problems.append(f"{key}: must be a 0x address, got {value!r}")
    for key in OPTIONAL_KEYS:
        value = data.get(key)
        if value is not None and (not isinstance(value, str) or not is_address(value)):
            problems.append(f"{key}: must be a 0x address or absent, got {value!r}")
    if problems:
        raise DeploymentError(f"{path}: " + "; ".join(problems))
    optional = {k: to_checksum_address(data[k]) for k in OPTIONAL_KEYS if data.get(k) is not None}
    dep = Deployment(chain_id=data["chain_id"], deploy_block=data["deploy_block"],
                     **{k: to_checksum_address(data[k]) for k in CONTRACT_KEYS}, **optional)
    if expected_chain_id is not None and dep.chain_id != expected_chain_id:
        raise DeploymentError(f"{path}: is for chain {dep.chain_id}, but chain {expected_chain_id} was expected")
    return dep


def save_deployment(dep: Deployment, path: Path) -> None:
    """Writes atomically, so a crash never leaves a half-written addresses file behind."""
    write_atomic(path, dep.to_json())
