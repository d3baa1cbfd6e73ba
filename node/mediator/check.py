"""What a mediator checks before it signs: the disputed job as the chain records it, the result against the
provider's on-chain root, then the work itself, re-run with the requester's own verifier.

Everything about the job comes from the chain, not from either party: the offer and its params from the
job's ``OfferPosted`` log (checked to hash to the job id), the result root from ``getJob``. The files come
from the parties, and each is pinned by the chain: the bundle by the offer's ``inputHash`` (a wrong bundle is
the mediator's problem to fix, not a verdict), the result by the provider's ``resultRoot``.

The verdict rules (docs/verification.md, "Float work"):
* no result file the provider stands behind, or one whose RFC 6962 root is not the committed root: the
  provider is wrong. Serving the committed result is the provider's duty; if the only file the mediators can
  obtain does not match, nothing shows the provider did the work (mediators should ask the provider's API
  themselves, not only take the requester's copy);
* otherwise the verifier's verdict: torch-export/v1 re-run on the CPU and compared within the calibrated
  per-dtype tolerance, matmul-int8/v1 exact (Freivalds).
A bundle that does not run here decides nothing: the check fails and no ruling is signed.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from web3.exceptions import Web3RPCError

from node.chain.offers import JobOffer, offer_digest, workload_id
from node.chain.provider import OperatorChain
from node.compute.commitment import commit_file
from node.requester.client import JOB_STATES
from node.requester.errors import RequesterError
from node.requester.terms import file_sha256

MATMUL, TORCH_EXPORT = "matmul-int8/v1", "torch-export/v1"
WORKLOADS = {workload_id(name): name for name in (MATMUL, TORCH_EXPORT)}
LOG_WINDOW = 10_000  # blocks per eth_getLogs when an endpoint refuses the whole range at once
MAX_BUNDLE_BYTES = 4 << 30


class MediatorError(RuntimeError):
    """The check cannot reach a verdict (wrong job, wrong files, unreachable chain); nothing is signed."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint


@dataclass(frozen=True)
class DisputedJob:
    job_id: bytes
    offer: JobOffer
    params: bytes
    workload: str
    state: str
    provider: str
    result_root: bytes

    @property
    def params_json(self) -> dict[str, Any]:
        try:
            value = json.loads(self.params)
        except (UnicodeDecodeError, json.JSONDecodeError):
            value = None
        if not isinstance(value, dict):
            raise MediatorError(f"job 0x{self.job_id.hex()}: its params are not a JSON object")
        return value


@dataclass(frozen=True)
class Verdict:
    provider_was_right: bool
    reason: str
    evidence: dict[str, Any]


def load_job(chain: OperatorChain, job_id: bytes) -> DisputedJob:
    """The job from the chain: state, provider and result root from getJob, the offer and params from its
    OfferPosted log."""
    market = chain.market
    job = market.functions.getJob(job_id).call()
    requester, provider, state, root = job[0], job[1], JOB_STATES[job[2]], bytes(job[8])
    if state == "None":
        raise MediatorError(f"no job 0x{job_id.hex()} on this market ({market.address})")
    event = market.events.OfferPosted
    logs = _logs(chain, {"address": market.address, "topics": [event.topic, "0x" + job_id.hex()]})
    if not logs:
        raise MediatorError(f"no OfferPosted log for job 0x{job_id.hex()} since block {chain.deployment.deploy_block}")
    args = event().process_log(logs[0])["args"]
    offer = JobOffer.from_struct(args["offer"])
    if offer_digest(offer, chain.deployment.chain_id, market.address) != job_id or offer.requester != requester:
        raise MediatorError(f"the OfferPosted log of job 0x{job_id.hex()} does not hash to it")
    name = WORKLOADS.get(offer.workload)
    if name is None:
        raise MediatorError(f"job 0x{job_id.hex()} runs workload 0x{offer.workload.hex()}, which this tool cannot "
                            f"check (it knows {', '.join(WORKLOADS.values())})")
    return DisputedJob(job_id, offer, bytes(args["params"]), name, state, provider, root)


def _logs(chain: OperatorChain, query: dict[str, Any]) -> list[Any]:
    w3, start = chain.w3, chain.deployment.deploy_block
    try:
        return list(w3.eth.get_logs({**query, "fromBlock": start, "toBlock": "latest"}))
    except Web3RPCError:  # many public endpoints cap the range: walk it in windows instead
        head, found, lo = w3.eth.block_number, [], start
        while lo <= head and not found:
            hi = min(lo + LOG_WINDOW - 1, head)
            found = list(w3.eth.get_logs({**query, "fromBlock": lo, "toBlock": hi}))
            lo = hi + 1
        return found


def job_input(job: DisputedJob, bundle: Path | None, *, allow_private: bool, cache: Path) -> Path | None:
    """The job's input file: ``bundle`` when given (its SHA-256 must be the offer's inputHash), else fetched
    from the offer's inputURI with the node's own fetcher (which checks the hash). None: the job has none."""
    want = job.offer.inputHash
    if bundle is not None:
        if not bundle.is_file():
            raise MediatorError(f"{bundle}: no such file")
        if file_sha256(bundle) != want:
            raise MediatorError(f"{bundle} is not this job's input: its SHA-256 is not the offer's inputHash "
                                f"0x{want.hex()}", "get the job's input file (the offer's inputURI)")
        return bundle
    if want == bytes(32) and not job.offer.inputURI:
        return None
    from node.compute.inputs import InputError, fetch_input

    try:
        return asyncio.run(fetch_input(job.offer.inputURI, want, cache, max_bytes=MAX_BUNDLE_BYTES,
                                       allow_private=allow_private))
    except InputError as exc:
        raise MediatorError(f"cannot fetch the job's input from {job.offer.inputURI!r}: {exc}",
                            "pass --bundle FILE (any copy whose SHA-256 matches the offer)") from None


def judge(job: DisputedJob, result: Path | None, bundle: Path | None, *, rtol: float | None = None,
          atol: float | None = None, allow_private: bool = False) -> Verdict:
    """The verdict on a job (module docstring); raises MediatorError when there is none to give."""
    facts: dict[str, Any] = {"job_id": "0x" + job.job_id.hex(), "workload": job.workload, "state": job.state,
                             "provider": job.provider, "result_root": "0x" + job.result_root.hex()}
    if job.result_root == bytes(32):
        raise MediatorError(f"job {facts['job_id']} has no committed result ({job.state})")
    if result is None:
        return Verdict(False, "the provider's committed result could not be obtained", facts)
    if not result.is_file():
        raise MediatorError(f"{result}: no such file", "pass the result file, or --no-result if the provider "
                            "does not serve one")
    commitment = commit_file(result)
    facts |= {"file_root": "0x" + commitment.root.hex(), "file_bytes": commitment.size}
    if commitment.root != job.result_root:
        return Verdict(False, "the result file does not match the provider's committed root", facts)
    with tempfile.TemporaryDirectory(prefix="gpunode-mediate-") as tmp:
        inp = job_input(job, bundle, allow_private=allow_private, cache=Path(tmp))
        report = _verify(job, inp, result, rtol, atol)
    facts["report"] = report.to_json()
    return Verdict(report.ok, report.detail, facts)


def _verify(job: DisputedJob, inp: Path | None, result: Path, rtol: float | None, atol: float | None) -> Any:
    from node.requester.verify import verify_matmul, verify_torch_export

    params = job.params_json
    try:
        if job.workload == TORCH_EXPORT:
            if inp is None:
                raise MediatorError("a torch-export/v1 job without an input bundle")
            return verify_torch_export(params, inp, result, rtol=rtol, atol=atol)
        return verify_matmul(params, inp, result)
    except RequesterError as exc:
        raise MediatorError(f"cannot check the work: {exc}") from None
