"""One-off operator actions on chain: register (or update) the provider record, top up its stake, and move
earnings to the payout address. Behind ``gpunode register`` and ``gpunode withdraw``.

These run while a human watches, once, so they are synchronous sign-send-wait steps like
node/chain/deploy.py, but they sign with the keystore's ``Signer`` (the key never leaves it) and bid fees the
way the node does (EIP-1559 from ``eth_feeHistory``, clamped to the configured ceiling). Every action first
reads what is on chain and sends only what is missing, so re-running a command after an interruption, or
with the same arguments, is safe and sends nothing new.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from web3 import Web3
from web3.exceptions import ContractCustomError, ContractLogicError, TimeExhausted
from web3.logs import DISCARD

from node.chain.contracts import decode_revert, load_abi
from node.chain.deployments import Deployment, DeploymentError, load_deployment
from node.chain.fees import GWEI, FeePolicy
from node.chain.keys import Signer, default_keystore_path, load_signer, resolve_password
from node.chain.protocol import Capacity
from node.chain.rpc import redact
from node.config import Settings

ZERO = "0x" + "00" * 20
GAS_MARGIN = 1.2  # over the estimate: state may change a little between estimation and inclusion


class OperatorError(RuntimeError):
    """An operator action cannot be done; the message says what is wrong and, where it helps, what to do."""


@dataclass(frozen=True)
class Step:
    """One mined transaction."""

    name: str
    tx_hash: str
    gas_used: int
    fee_wei: int

    def __str__(self) -> str:
        return f"{self.name}: gas {self.gas_used:,}, fee {self.fee_wei / 10**18:.6f} ETH, tx {self.tx_hash}"


def tokens(units: int, decimals: int) -> str:
    """Base units as a plain decimal amount of whole tokens, e.g. 1500000000000000000 -> "1.5"."""
    return format(Decimal(units).scaleb(-decimals).normalize(), "f") if units else "0"


class OperatorChain:
    """The deployed contracts as the operator's tools see them, with the fee policy from the settings."""

    def __init__(self, w3: Web3, deployment: Deployment, fees: FeePolicy) -> None:
        self.w3 = w3
        self.deployment = deployment
        self.fees = fees
        self.token = w3.eth.contract(address=deployment.token, abi=load_abi("GpuToken"))
        self.registry = w3.eth.contract(address=deployment.registry, abi=load_abi("ProviderRegistry"))
        self.market = w3.eth.contract(address=deployment.market, abi=load_abi("JobMarket"))

    def send(self, signer: Signer, call: Any, name: str, *, timeout: float = 180) -> Step:
        """Estimate (which simulates: a revert is reported before anything is sent), sign, send, wait."""
        w3, sender = self.w3, signer.address
        fees = self.fees.market(w3.eth.fee_history(5, "latest", [50]))
        try:
            tx = call.build_transaction({
                "from": sender, "chainId": self.deployment.chain_id,
                "nonce": w3.eth.get_transaction_count(sender, "pending"),
                "maxFeePerGas": fees.max_fee, "maxPriorityFeePerGas": fees.tip,
            })
        except ContractCustomError as exc:
            raise OperatorError(f"{name} would revert: {decode_revert(exc.data)}") from None
        except ContractLogicError as exc:
            raise OperatorError(f"{name} would revert: {exc.message or exc}") from None
        tx["gas"] = int(tx["gas"] * GAS_MARGIN)
        need, have = tx["gas"] * fees.max_fee, w3.eth.get_balance(sender)
        if have < need:
            raise OperatorError(f"{name}: the operator {sender} holds {have / 10**18:.6f} ETH but may need up to "
                                f"{need / 10**18:.6f} ETH for gas ({tx['gas']:,} gas at {fees.max_fee / GWEI:g} "
                                "gwei); fund it and rerun")
        raw_hash = w3.eth.send_raw_transaction(signer.sign_transaction(tx).raw_transaction)
        tx_hash = "0x" + bytes(raw_hash).hex()
        try:
            receipt = w3.eth.wait_for_transaction_receipt(raw_hash, timeout=timeout)
        except TimeExhausted:
            raise OperatorError(f"{name}: transaction {tx_hash} not mined within {timeout:g} s; check it "
                                "in an explorer, then rerun (the command only sends what is still missing)") from None
        if receipt["status"] != 1:
            raise OperatorError(f"{name}: transaction {tx_hash} reverted")
        price = receipt.get("effectiveGasPrice") or fees.max_fee
        return Step(name, tx_hash, receipt["gasUsed"], receipt["gasUsed"] * price)

    def provider(self, operator: str) -> dict[str, Any]:
        """getProvider as a dict keyed by the Provider struct's field names (capacity stays a tuple)."""
        call = self.registry.functions.getProvider(operator)
        names = [o["name"] for o in call.abi["outputs"][0]["components"]]
        return dict(zip(names, call.call(), strict=True))


def connect(settings: Settings, *, max_fee_gwei: float | None = None) -> OperatorChain:
    """The first RPC endpoint that answers, checked to be the configured chain with the contracts deployed."""
    errors = []
    for url in settings.chain.rpc_urls:
        w3 = Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": settings.chain.request_timeout_s},
                                    exception_retry_configuration=None))  # failing over is ours to do
        try:
            chain_id = w3.eth.chain_id
        except Exception as exc:  # connection refused, DNS, timeout, HTTP error: try the next endpoint
            errors.append(f"{redact(url)}: {type(exc).__name__}")
            continue
        break
    else:
        raise OperatorError(f"no RPC endpoint answered ({'; '.join(errors)}); check chain.rpc_urls")
    if chain_id != settings.chain.chain_id:
        raise OperatorError(f"{redact(url)} is chain {chain_id}, but chain.chain_id is {settings.chain.chain_id}")
    try:
        dep = load_deployment(settings.chain.deployments, expected_chain_id=chain_id)
    except DeploymentError as exc:
        raise OperatorError(f"{exc} (chain.deployments)") from None
    if not w3.eth.get_code(dep.registry):
        raise OperatorError(f"no contract at the registry address {dep.registry} on chain {chain_id}: "
                            f"{settings.chain.deployments} is from another deployment")
    policy = FeePolicy.from_settings(settings.chain)
    if max_fee_gwei is not None:
        policy = FeePolicy(min(policy.ceiling, int(max_fee_gwei * GWEI)), policy.min_tip)
    return OperatorChain(w3, dep, policy)


def operator_signer(settings: Settings) -> Signer:
    """Unlock the node's keystore (wallet.keystore, else <data_dir>/keystore.json) with the configured password."""
    path = default_keystore_path(settings)
    if not path.exists():
        raise OperatorError(f"no keystore at {path}; create one with `gpunode init` or `gpunode keys new`")
    return load_signer(path, resolve_password(settings, confirm=False))


# -- the capacity attestation -------------------------------------------------------------------------------


def load_attestation(path: Path) -> dict[str, Any]:
    """A bench attestation file, checked for the fields registration uses and for its own hash."""
    from node.compute.bench import attestation_hash

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise OperatorError(f"cannot read the bench attestation {path}: {exc.strerror or exc}") from None
    except ValueError:
        raise OperatorError(f"{path} is not a bench attestation: not valid JSON") from None
    needed = {"name", "int8_tops", "float_tflops", "float_kind"}
    devices = data.get("devices") if isinstance(data, dict) else None
    ok = isinstance(devices, list) and devices and all(isinstance(d, dict) and needed <= d.keys() for d in devices)
    if not ok or not isinstance(data.get("benchmark_hash"), str):
        raise OperatorError(f"{path} is not a bench attestation (no devices or benchmark_hash); "
                            "rerun `gpunode bench`")
    if data["benchmark_hash"].lower() != "0x" + attestation_hash(data).hex():
        raise OperatorError(f"{path} was changed after it was measured (its benchmark_hash does not match its "
                            "contents); rerun `gpunode bench`")
    return data


def capacity_from_attestation(attestation: dict[str, Any], vram_mib: int = 0) -> Capacity:
    """ProviderRegistry.Capacity: model names, device count and summed throughput from the attestation;
    `vram_mib` per device comes from detection (the attestation does not record it; 0 for a CPU node)."""
    from node.compute.bench import registry_figures

    figures = registry_figures(attestation)
    names = list(dict.fromkeys(str(d["name"]) for d in attestation["devices"]))  # unique, in order
    on_gpu = any(str(d.get("device", "")).startswith("cuda") for d in attestation["devices"])
    model = ", ".join(names) if on_gpu else f"cpu ({names[0]})"
    return Capacity(model[:128], figures["deviceCount"], vram_mib, figures["int8TopsMilli"],
                    figures["bf16TflopsMilli"], bytes.fromhex(attestation["benchmark_hash"][2:]))


def detected_vram_mib(attestation: dict[str, Any], nvml: Any = None) -> int:
    """Smallest VRAM of this machine's GPUs (per device, as the registry records it); 0 for a CPU attestation.
    `nvml`: the hardware module's NvmlApi seam (None = the real NVML)."""
    if not any(str(d.get("device", "")).startswith("cuda") for d in attestation["devices"]):
        return 0
    from node.compute.hardware import detect

    sizes = [g.vram_total_mib for g in detect(nvml).gpus if g.vram_total_mib]
    return min(sizes) if sizes else 0


# -- register + stake ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Registration:
    payout: str
    capacity: Capacity
    price_floor: int  # token base units per GPU-second
    endpoint: str
    metadata_uri: str = ""


def _differences(current: dict[str, Any], want: Registration) -> list[str]:
    diffs = []
    if current["payout"].lower() != want.payout.lower():
        diffs.append(f"payout {current['payout']} -> {Web3.to_checksum_address(want.payout)}")
    if tuple(current["capacity"]) != want.capacity.as_struct():
        diffs.append("capacity (new benchmark)")
    if current["priceFloorPerGpuSecond"] != want.price_floor:
        diffs.append(f"price floor {current['priceFloorPerGpuSecond']} -> {want.price_floor} units/GPU-s")
    if current["endpoint"] != want.endpoint:
        diffs.append(f"endpoint {current['endpoint'] or '(none)'} -> {want.endpoint}")
    return diffs


def register_provider(chain: OperatorChain, signer: Signer, want: Registration, *, stake_total: int | None,
                      token_decimals: int, say: Callable[[str], None] = print) -> list[Step]:
    """Make the chain hold `want` and at least `stake_total` bonded stake, sending only what is missing.

    Not registered -> register; registered with a different record -> update (keeping its metadata URI);
    identical -> nothing. Stake below `stake_total` -> approve (if the allowance is short) + stake the
    difference; at or above it -> nothing (stake is never taken out here). Returns the mined steps.
    """
    operator = signer.address
    if want.payout.lower() in (ZERO, operator.lower()):
        raise OperatorError(f"the payout address must be another address than the operator {operator} (the "
                            "registry refuses it): use a wallet you control, ideally a cold one")
    chain_decimals = chain.token.functions.decimals().call()
    if chain_decimals != token_decimals:
        raise OperatorError(f"pricing.token_decimals is {token_decimals} but the token at {chain.token.address} "
                            f"has {chain_decimals} decimals; fix the config so amounts mean what you think")
    payout = Web3.to_checksum_address(want.payout)
    steps: list[Step] = []
    current = chain.provider(operator)
    record = (payout, want.capacity.as_struct(), want.price_floor, want.endpoint)
    if not current["active"]:
        step = chain.send(signer, chain.registry.functions.register(*record, want.metadata_uri), "register")
        say(f"registered {operator} (payout {payout}, endpoint {want.endpoint}) — {step}")
        steps.append(step)
    elif diffs := _differences(current, want):
        step = chain.send(signer, chain.registry.functions.update(*record, current["metadataURI"]), "update")
        say(f"updated the provider record: {'; '.join(diffs)} — {step}")
        steps.append(step)
    else:
        say(f"{operator} is already registered with this record: nothing to update")

    have = chain.provider(operator)["stake"] if steps else current["stake"]
    fmt = lambda units: f"{tokens(units, token_decimals)} tokens"  # noqa: E731
    if stake_total is None:
        say(f"stake: {fmt(have)} (unchanged; pass --stake AMOUNT to set the total)")
        return steps
    if have >= stake_total:
        say(f"stake: {fmt(have)} already, at least the {fmt(stake_total)} asked for: nothing to stake")
        return steps
    missing = stake_total - have
    balance = chain.token.functions.balanceOf(operator).call()
    if balance < missing:
        raise OperatorError(f"staking {fmt(missing)} more (to reach {fmt(stake_total)}) needs that much in the "
                            f"operator's wallet {operator}, which holds {fmt(balance)}")
    say(f"stake: {fmt(have)} now; staking the missing {fmt(missing)} to reach {fmt(stake_total)}")
    if chain.token.functions.allowance(operator, chain.registry.address).call() < missing:
        step = chain.send(signer, chain.token.functions.approve(chain.registry.address, missing), "approve")
        say(f"  approved the registry to take {fmt(missing)} — {step}")
        steps.append(step)
    step = chain.send(signer, chain.registry.functions.stake(missing), "stake")
    say(f"  staked {fmt(missing)} — {step}")
    steps.append(step)
    return steps


# -- withdraw ------------------------------------------------------------------------------------------------


def payout_of(chain: OperatorChain, operator: str, configured: str) -> str:
    """Where the market credits this provider's earnings: the registered payout address (the config's
    payout.address only when the operator is not registered)."""
    registered = chain.registry.functions.payoutOf(operator).call()
    if registered and registered != ZERO:
        return registered
    if configured:
        return Web3.to_checksum_address(configured)
    raise OperatorError(f"{operator} is not registered and payout.address is not set: nothing to withdraw for; "
                        "pass --payout ADDRESS or register first")


def withdraw_earnings(chain: OperatorChain, signer: Signer, payout: str) -> tuple[int, Step | None]:
    """JobMarket.withdrawFor(payout): the payout address's whole credited balance goes to it. Returns the
    amount moved and the step; (0, None) when there was nothing to withdraw (no transaction sent)."""
    payout = Web3.to_checksum_address(payout)
    if chain.market.functions.balanceOf(payout).call() == 0:
        return 0, None
    try:
        step = chain.send(signer, chain.market.functions.withdrawFor(payout), "withdrawFor")
    except OperatorError as exc:
        if "NothingToWithdraw" in str(exc):  # someone withdrew it between the read and the send
            return 0, None
        raise
    receipt = chain.w3.eth.get_transaction_receipt(step.tx_hash)
    events = chain.market.events.Withdrawn().process_receipt(receipt, errors=DISCARD)  # skip token logs
    return sum(e["args"]["amount"] for e in events if e["args"]["account"] == payout), step
