"""Deploying the protocol contracts with web3.py from forge artifacts.

Used by ``scripts/devnet.py``, ``scripts/deploy.py`` and the test fixtures, so all three deploy and wire
the contracts the same way. Deployment is a one-off operator action, so it uses the synchronous web3
client and waits for each receipt; the node's own sends go through the transaction manager instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.contract.contract import ContractFunction
from web3.exceptions import ContractCustomError

from node.chain.contracts import FORGE_OUT, decode_revert, forge_artifact
from node.chain.deployments import Deployment


class DeployError(RuntimeError):
    """A deployment transaction failed or reverted."""


@dataclass(frozen=True)
class ProtocolParams:
    fee_bps: int = 250
    challenge_window_s: int = 3600
    unbonding_delay_s: int = 7 * 24 * 3600
    treasury: str | None = None  # default: the deployer
    arbiter: str | None = None  # default: the deployer
    owner: str | None = None  # default: the deployer
    challenge_bond: int = 10 * 10**18  # MatmulInt8Verifier: what a challenger risks per challenge or demand
    reveal_window_s: int = 3600  # MatmulInt8Verifier: how long a provider has to answer a reveal demand
    #: When given, a MediatorSet of these addresses (threshold ``mediator_threshold``) becomes the arbiter.
    mediators: tuple[str, ...] = ()
    mediator_threshold: int = 0


def send(w3: Web3, account: LocalAccount, call: ContractFunction | dict[str, Any], *, timeout: float = 120) -> Any:
    """Signs locally, sends and waits for the receipt; raises DeployError with the decoded reason when the
    call would revert (estimation simulates it first) or did revert."""
    try:
        tx = call if isinstance(call, dict) else call.build_transaction({"from": account.address})
    except ContractCustomError as exc:
        raise DeployError(f"would revert: {decode_revert(exc.data)}") from None
    tx = {**tx, "from": account.address, "nonce": w3.eth.get_transaction_count(account.address, "pending"),
          "chainId": w3.eth.chain_id}
    tx.setdefault("gas", w3.eth.estimate_gas(tx))
    signed = account.sign_transaction(tx)
    tx_hash = w3.eth.send_raw_transaction(signed.raw_transaction)
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=timeout)
    if receipt["status"] != 1:
        raise DeployError(f"transaction {tx_hash.hex()} reverted")
    return receipt


def deploy_contract(w3: Web3, account: LocalAccount, name: str, *args: Any,
                    out_dir: Path = FORGE_OUT) -> tuple[Any, Any]:
    """Deploys src/<name>.sol and returns (contract, receipt)."""
    art = forge_artifact(name, out_dir)
    factory = w3.eth.contract(abi=art["abi"], bytecode=art["bytecode"])
    receipt = send(w3, account, factory.constructor(*args).build_transaction({"from": account.address}))
    return w3.eth.contract(address=receipt["contractAddress"], abi=art["abi"]), receipt


def deploy_protocol(
    w3: Web3,
    deployer_key: str | bytes,
    params: ProtocolParams = ProtocolParams(),
    *,
    out_dir: Path = FORGE_OUT,
    progress: Callable[[str, Any], None] = lambda step, receipt: None,
) -> Deployment:
    """Deploys GpuToken, ProviderRegistry, JobMarket and the matmul-int8 fraud-proof verifier (registered with
    the market), and, when mediators are given, a MediatorSet as the market's arbiter; returns the addresses
    with the first deploy block (where event followers start)."""
    account: LocalAccount = Account.from_key(deployer_key)
    me = account.address
    token, r_token = deploy_contract(w3, account, "GpuToken", me, out_dir=out_dir)
    progress("GpuToken", r_token)
    registry, r_reg = deploy_contract(w3, account, "ProviderRegistry", token.address, params.unbonding_delay_s, me,
                                      out_dir=out_dir)
    progress("ProviderRegistry", r_reg)
    market, r_market = deploy_contract(
        w3, account, "JobMarket", registry.address, params.treasury or me, params.fee_bps,
        params.challenge_window_s, params.arbiter or me, me, out_dir=out_dir,
    )
    progress("JobMarket", r_market)
    progress("ProviderRegistry.setMarket", send(w3, account, registry.functions.setMarket(market.address)))
    verifier, r_ver = deploy_contract(w3, account, "MatmulInt8Verifier", market.address, params.challenge_bond,
                                      params.reveal_window_s, me, out_dir=out_dir)
    progress("MatmulInt8Verifier", r_ver)
    workload = verifier.functions.WORKLOAD().call()
    progress("JobMarket.setVerifier", send(w3, account, market.functions.setVerifier(workload, verifier.address)))
    owned = [("GpuToken", token), ("ProviderRegistry", registry), ("JobMarket", market),
             ("MatmulInt8Verifier", verifier)]
    mediator_set = None
    if params.mediators:
        mediators = [Web3.to_checksum_address(a) for a in params.mediators]
        threshold = params.mediator_threshold or len(mediators) // 2 + 1
        mediator_set, r_med = deploy_contract(w3, account, "MediatorSet", market.address, mediators, threshold, me,
                                              out_dir=out_dir)
        progress("MediatorSet", r_med)
        progress("JobMarket.setArbiter", send(w3, account, market.functions.setArbiter(mediator_set.address)))
        owned.append(("MediatorSet", mediator_set))
    owner = params.owner
    if owner and Web3.to_checksum_address(owner) != me:
        # GpuToken hands over at once; the others are Ownable2Step, so the new owner must still call
        # acceptOwnership (a typo in the address cannot lose the protocol).
        for name, contract in owned:
            progress(f"{name}.transferOwnership", send(w3, account, contract.functions.transferOwnership(owner)))
    return Deployment(chain_id=w3.eth.chain_id, token=token.address, registry=registry.address,
                      market=market.address, deploy_block=r_token["blockNumber"], verifier=verifier.address,
                      mediator_set=mediator_set.address if mediator_set else None)
