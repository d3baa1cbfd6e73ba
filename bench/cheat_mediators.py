"""The simulation's mediator panel: three independent mediators rule on a disputed float job with gpunode's
mediator tool (node.mediator: the chain's view of the job, the verdict rules, EIP-712 rulings, collection
in the contract's signer order), and two signatures resolve it through MediatorSet.

Why each mediator downloads the result itself: a requester that disputes an honest result would otherwise
hand the mediators a file of its own choosing; the mediators ask the provider's endpoint, and the root the
provider committed on chain decides whether what they got is the provider's result.
"""

from __future__ import annotations

from pathlib import Path

from eth_account import Account

from bench.cheat_world import THRESHOLD, World
from node.chain.contracts import load_abi
from node.chain.fees import GWEI, FeePolicy
from node.chain.keys import Signer
from node.chain.provider import OperatorChain
from node.mediator.check import judge, load_job
from node.mediator.ruling import Ruling, collect
from node.requester.download import download_result
from node.requester.errors import RequesterError, ResultMismatch

MEDIATOR_FETCH_S = 1.0


def _fetch(endpoint: str, job_id: str, root: bytes, out: Path) -> Path | None:
    """The provider's result as one mediator gets it: the file, the mismatching file, or None."""
    try:
        return download_result(endpoint, job_id, dict, root, out, timeout=MEDIATOR_FETCH_S, poll_s=0.05)
    except ResultMismatch as exc:
        return exc.path
    except RequesterError:
        return None


def rule_and_resolve(w: World, job_id: str, endpoint: str, bundle: Path) -> tuple[bool, int]:
    """Every mediator checks and signs; the first THRESHOLD rulings are submitted. Returns the verdict
    (provider was right) and the gas of MediatorSet.resolve. A split panel raises (collect refuses it)."""
    chain = OperatorChain(w.w3, w.deployment, FeePolicy(int(500 * GWEI), int(0.1 * GWEI)))
    mset = w.w3.eth.contract(address=w.deployment.mediator_set, abi=load_abi("MediatorSet"))
    job = load_job(chain, bytes.fromhex(job_id[2:]))
    rulings = []
    for n, key in enumerate(w.mediator_keys):
        folder = w.root / f"mediator{n}"
        folder.mkdir(exist_ok=True)
        result = _fetch(endpoint, job_id, job.result_root, folder / f"{job_id}.out")
        verdict = judge(job, result, bundle)
        rulings.append(Ruling.sign(Signer(Account.from_key(key)), w.deployment.chain_id, mset.address, job.job_id,
                                   verdict.provider_was_right, reason=verdict.reason))
    if len({r.provider_was_right for r in rulings}) != 1:
        raise RuntimeError(f"the mediators disagree on job {job_id}: "
                           + "; ".join(f"{r.signer}: {r.provider_was_right} ({r.reason})" for r in rulings))
    mediators, threshold = mset.functions.getMediators().call()
    assert threshold == THRESHOLD
    decision = collect(rulings[:THRESHOLD], mediators=mediators, threshold=threshold)
    step = chain.send(Signer(Account.from_key(w.mediator_keys[0])),
                      mset.functions.resolve(job.job_id, decision.provider_was_right, decision.signatures), "resolve")
    return decision.provider_was_right, step.gas_used
