"""The requester's chain actions: sign offers, pay for them, follow jobs, fetch and check results, settle.

Synchronous on purpose: a requester runs one job at a time from a terminal or a script, and each step
waits for the last. Transactions go through the operator tools' ``OperatorChain.send`` (a revert is
reported before anything is sent, fees come from ``eth_feeHistory`` under a ceiling), so both sides of the
market send the same way. The key stays inside a ``Signer``: offers and permits are signed as EIP-712
typed data and result downloads as EIP-191 text, never with a raw key in this module.

Every offer is recorded in the state directory (``node.requester.state``) the moment it is signed, so the
later steps (``fetch``, ``verify``, ``accept``) work from a job id alone, in another process, days later.
"""

from __future__ import annotations

import contextlib
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from web3 import Web3

from node.chain.deployments import DeploymentError, default_path, load_deployment
from node.chain.fees import GWEI, FeePolicy
from node.chain.keys import Signer
from node.chain.offers import ZERO_ADDRESS, JobOffer, typed_data, workload_id
from node.chain.provider import OperatorChain, OperatorError, Step, connect, tokens
from node.chain.rpc import redact
from node.chain.verify import SignedOffer, check_offer_local
from node.compute import workloads
from node.config import ChainSettings, Settings
from node.requester.download import MAX_RESULT_BYTES, download_result
from node.requester.errors import RequesterError
from node.requester.state import DEFAULT_STATE_DIR, JobRecord, JobStore, normalise_job_id
from node.requester.terms import MATMUL, canonical_matmul, check_terms, file_sha256, permit_typed_data
from node.requester.verify import Report, verify_matmul, verify_torch_export

if TYPE_CHECKING:
    from node.requester.proofs import FraudProofs

#: JobMarket.JobState, in declaration order (getJob returns the index).
JOB_STATES = ("None", "Open", "Claimed", "Submitted", "Disputed", "Challenged", "Finalized", "Cancelled", "Expired",
              "Slashed")
TERMINAL = frozenset({"Finalized", "Cancelled", "Expired", "Slashed"})
PERMIT_LIFETIME_S = 3600
Progress = Callable[[dict[str, Any]], None]


class Requester:
    """One requester key on one deployment. ``signer`` may be None for read-only use (status, follow,
    verify); the actions that sign say so when it is missing."""

    def __init__(self, chain: OperatorChain, signer: Signer | None, *, state_dir: Path | None = None,
                 poll_s: float = 1.0) -> None:
        self.chain = chain
        self.w3: Web3 = chain.w3
        self.signer = signer
        self.store = JobStore(state_dir or DEFAULT_STATE_DIR)
        self.poll_s = poll_s

    @classmethod
    def connect(cls, rpc_url: str, deployments: Path | None, signer: Signer | None, *, chain_id: int | None = None,
                max_fee_gwei: float | None = None, state_dir: Path | None = None) -> Requester:
        """Checks that the endpoint answers, is ``chain_id`` (when given) and holds the deployment's market.
        ``deployments`` None: deployments/<chain id>.json. Fees: the node's defaults (chain.max_fee_gwei
        ceiling, chain.priority_fee_gwei tip) unless ``max_fee_gwei`` is given."""
        w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": 30}))
        try:
            actual = w3.eth.chain_id
        except Exception as exc:  # refused, DNS, timeout, not JSON-RPC: all mean "not this URL"
            raise RequesterError(f"the RPC endpoint {redact(rpc_url)} does not answer ({type(exc).__name__})",
                                 "check --rpc (a devnet: `gpunode devnet`)") from None
        if chain_id is not None and actual != chain_id:
            raise RequesterError(f"{redact(rpc_url)} is chain {actual}, not the chain {chain_id} asked for")
        deployments = default_path(actual) if deployments is None else Path(deployments)
        try:
            dep = load_deployment(deployments, expected_chain_id=actual)
        except DeploymentError as exc:
            raise RequesterError(str(exc), "pass --deployments FILE for this chain") from None
        if not w3.eth.get_code(dep.market):
            raise RequesterError(f"no contract at the market address {dep.market} on chain {actual}: "
                                 f"{deployments} is from another deployment")
        defaults = ChainSettings()
        ceiling = defaults.max_fee_gwei if max_fee_gwei is None else max_fee_gwei
        fees = FeePolicy(int(ceiling * GWEI), int(defaults.priority_fee_gwei * GWEI))
        return cls(OperatorChain(w3, dep, fees), signer, state_dir=state_dir)

    @classmethod
    def from_settings(cls, settings: Settings, signer: Signer | None, *, max_fee_gwei: float | None = None,
                      state_dir: Path | None = None) -> Requester:
        """The chain section of a gpunode config: its RPC endpoints (first that answers), chain id, deployments
        file and fee ceiling."""
        try:
            chain = connect(settings, max_fee_gwei=max_fee_gwei)
        except OperatorError as exc:
            raise RequesterError(str(exc)) from None
        return cls(chain, signer, state_dir=state_dir)

    # -- basics ---------------------------------------------------------------------------------------------
    @property
    def address(self) -> str:
        return self._signer().address

    @property
    def chain_id(self) -> int:
        return self.chain.deployment.chain_id

    @property
    def market(self) -> str:
        return self.chain.deployment.market

    @property
    def proofs(self) -> FraudProofs:
        """matmul-int8 fraud proofs on the deployment's verifier: challenge, demand, audit, reveal timeout."""
        from node.requester.proofs import FraudProofs

        return FraudProofs(self)

    def _signer(self) -> Signer:
        if self.signer is None:
            raise RequesterError("this needs the requester's key", "pass --keystore FILE (password from "
                                 "$GPUNODE_REQUESTER_PASSWORD or --password-file) or --key-file FILE")
        return self.signer

    def now(self) -> int:
        """The latest block's timestamp: the clock the contracts judge expiry and deadlines by."""
        return int(self.w3.eth.get_block("latest")["timestamp"])

    def decimals(self) -> int:
        return int(self.chain.token.functions.decimals().call())

    def balances(self) -> dict[str, int]:
        """Token balance, market allowance and market credit (refunds, cancelled payments) of the requester."""
        me, token = self.address, self.chain.token.functions
        return {"tokens": token.balanceOf(me).call(), "allowance": token.allowance(me, self.market).call(),
                "credit": self.chain.market.functions.balanceOf(me).call()}

    # -- offers ---------------------------------------------------------------------------------------------
    def next_nonce(self) -> int:
        """The smallest nonce neither used on chain (the market's bitmap, read 256 nonces per call) nor held
        by an unexpired offer recorded here: an offer signed but not yet posted must keep its nonce."""
        me, now = self.address, self.now()
        reserved = {r.signed.offer.nonce for r in self.store.records()
                    if r.signed.offer.requester == me and r.signed.chain_id == self.chain_id
                    and r.signed.market == self.market and r.signed.offer.expiry > now}
        word = 0
        while True:
            used = self.chain.market.functions.nonceBitmap(me, word).call()
            for bit in range(256):
                nonce = word * 256 + bit
                if not (used >> bit) & 1 and nonce not in reserved:
                    return nonce
            word += 1

    def build_offer(self, workload: str, params: bytes, *, payment: int, bond: int, max_duration: int,
                    expires_in: int, nonce: int | None = None, provider: str = ZERO_ADDRESS,
                    input_path: Path | None = None, input_uri: str = "") -> SignedOffer:
        """Checks the terms as the contract and the node would, signs the offer and records it (matmul-int8
        params in canonical form with an audit commitment, whose secret only the record keeps)."""
        kind = check_terms(workload, params, payment=payment, bond=bond, max_duration=max_duration,
                           expires_in=expires_in, input_path=input_path, input_uri=input_uri)
        secret = None
        if kind.name == MATMUL:  # the form a fraud proof needs, with an audit commitment (terms.py)
            params, secret = canonical_matmul(params, input_path)
        if provider != ZERO_ADDRESS and not self.chain.registry.functions.isActive(provider).call():
            raise RequesterError(f"{provider} is not an active provider on this chain's registry")
        me = self.address
        if nonce is None:
            nonce = self.next_nonce()
        elif self.chain.market.functions.isNonceUsed(me, nonce).call():
            raise RequesterError(f"nonce {nonce} of {me} is already used on chain", "leave --nonce out to take "
                                 "the next free one")
        input_hash = file_sha256(input_path) if input_path is not None else bytes(32)
        now = self.now()
        offer = JobOffer(requester=me, provider=provider, workload=workload_id(kind.name),
                         paramsHash=Web3.keccak(params), inputHash=input_hash, inputURI=input_uri, payment=payment,
                         providerBond=bond, maxDuration=max_duration, expiry=now + expires_in, nonce=nonce)
        signature = self._signer().sign_typed_data(full_message=typed_data(offer, self.chain_id, self.market))
        signed = SignedOffer(offer, bytes(signature.signature), self.chain_id, self.market, bytes(params))
        verdict = check_offer_local(signed, chain_id=self.chain_id, market=self.market, now=now)
        if not verdict.ok:  # our own signature: failing here is a bug, not something to send
            raise RequesterError(f"the signed offer fails its own check: {verdict.reason}: {verdict.detail}")
        path = str(input_path.resolve()) if input_path is not None else None
        self.store.save(JobRecord(signed, kind.name, path, None, time.time(),
                                  audit_secret=None if secret is None else "0x" + secret.hex()))
        return signed

    def remember(self, signed: SignedOffer, *, input_path: Path | None = None) -> JobRecord:
        """The offer's record, made now for an offer signed elsewhere (so fetch and verify can use it)."""
        job_id = "0x" + signed.job_id.hex()
        record = self.store.find(job_id)
        if record is None:
            if signed.params is None:
                raise RequesterError("the offer file has no params: they are needed to post and to verify")
            name = _workload_name(signed.offer.workload)
            path = str(input_path.resolve()) if input_path is not None else None
            record = JobRecord(signed, name, path, None, time.time())
            self.store.save(record)
        return record

    # -- paying ---------------------------------------------------------------------------------------------
    def ensure_allowance(self, amount: int, *, permit: bool = False) -> Step | None:
        """Lets the market take ``amount`` tokens: nothing is sent when the allowance already covers it;
        otherwise an ``approve`` or, with ``permit``, an EIP-2612 permit signed here (then sent by us)."""
        me, token = self.address, self.chain.token
        if token.functions.allowance(me, self.market).call() >= amount:
            return None
        if not permit:
            return self.chain.send(self._signer(), token.functions.approve(self.market, amount), "approve")
        deadline = self.now() + PERMIT_LIFETIME_S
        data = permit_typed_data(token.functions.eip712Domain().call(), me, self.market, amount,
                                 token.functions.nonces(me).call(), deadline)
        sig = self._signer().sign_typed_data(full_message=data)
        call = token.functions.permit(me, self.market, amount, deadline, sig.v, sig.r.to_bytes(32, "big"),
                                      sig.s.to_bytes(32, "big"))
        return self.chain.send(self._signer(), call, "permit")

    def _check_funds(self, offer: JobOffer) -> None:
        """The market pulls the payment when the offer is posted or claimed: say so now, not as a revert."""
        if offer.requester != self.address:
            return  # someone else's offer: their wallet pays
        have = self.balances()
        decimals = self.decimals()
        if have["tokens"] < offer.payment:
            raise RequesterError(f"the requester {offer.requester} holds {tokens(have['tokens'], decimals)} tokens; "
                                 f"the offer pays {tokens(offer.payment, decimals)}")
        if have["allowance"] < offer.payment:
            raise RequesterError(f"the market may take {tokens(have['allowance'], decimals)} of the requester's "
                                 f"tokens; the offer pays {tokens(offer.payment, decimals)}",
                                 "approve first (`approve AMOUNT`, or `--permit`)")

    def post(self, signed: SignedOffer) -> tuple[str, Step]:
        """postOffer on chain: the job is Open for any provider (or the one the offer names)."""
        self._check_envelope(signed)
        self._check_funds(signed.offer)
        call = self.chain.market.functions.postOffer(signed.offer.as_struct(), signed.params, signed.signature)
        step = self.chain.send(self._signer(), call, "postOffer")
        job_id = self.remember(signed).job_id
        self.store.note(job_id, posted_tx=step.tx_hash)
        return job_id, step

    def send(self, signed: SignedOffer, provider_url: str) -> dict[str, Any]:
        """POSTs the offer to a provider's ``/offers`` (it claims it with claimSigned); the node's JSON reply.
        Refusals (422) are returned too: ``accepted`` False with the node's ``code`` and ``reason``."""
        self._check_envelope(signed)
        self._check_funds(signed.offer)
        url = provider_url.rstrip("/") + "/offers"
        body = json.dumps(signed.to_json()).encode()
        request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as resp:
                reply = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            try:
                reply = json.loads(exc.read())
            except ValueError:
                reply = None
            if exc.code != 422 or not isinstance(reply, dict):
                raise RequesterError(f"{url} answered {exc.code}: {reply or exc.reason}") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise RequesterError(f"cannot send the offer to {url}: {getattr(exc, 'reason', exc)}") from None
        record = self.remember(signed)
        record.provider_url = provider_url.rstrip("/")
        record.notes["sent"] = reply
        self.store.save(record)
        return reply

    def _check_envelope(self, signed: SignedOffer) -> None:
        if signed.chain_id != self.chain_id or signed.market != self.market:
            raise RequesterError(f"the offer was signed for chain {signed.chain_id}, market {signed.market}; this "
                                 f"is chain {self.chain_id}, market {self.market}")
        if signed.params is None:
            raise RequesterError("the offer has no params: the market needs them to post it")

    # -- following ------------------------------------------------------------------------------------------
    def job(self, job_id: str) -> dict[str, Any]:
        """getJob as a dict: the Job struct's fields, ``state`` as its name, ``resultRoot`` as 0x-hex."""
        job_id = normalise_job_id(job_id)
        call = self.chain.market.functions.getJob(bytes.fromhex(job_id[2:]))
        names = [o["name"] for o in call.abi["outputs"][0]["components"]]
        job = dict(zip(names, call.call(), strict=True))
        job["state"] = JOB_STATES[job["state"]]
        job["resultRoot"] = "0x" + bytes(job["resultRoot"]).hex()
        return {"job_id": job_id, **job}

    def wait(self, job_id: str, states: set[str], *, timeout: float, progress: Progress | None = None) -> dict:
        """Polls until the job is in one of ``states``; ``progress(job)`` on every change of state. Gives up
        early, with the reason, when the job can no longer get there (a terminal state, an offer that
        expired unclaimed, a provider past its deadline)."""
        unknown = set(states) - set(JOB_STATES)
        if unknown:
            raise ValueError(f"unknown job states {sorted(unknown)}")
        give_up = time.monotonic() + timeout
        last = None
        while True:
            job = self.job(job_id)
            if job["state"] != last:
                last = job["state"]
                if progress is not None:
                    progress(job)
            if job["state"] in states:
                return job
            stuck = self._stuck(job, states)
            if stuck:
                raise RequesterError(stuck[0], stuck[1])
            if time.monotonic() >= give_up:
                raise RequesterError(f"timed out after {timeout:g} s waiting for job {job['job_id']} to be "
                                     f"{' or '.join(sorted(states))}; it is {job['state']}")
            time.sleep(self.poll_s)

    def _stuck(self, job: dict[str, Any], wanted: set[str]) -> tuple[str, str] | None:
        state, jid = job["state"], job["job_id"]
        if state in TERMINAL:
            return f"job {jid} is {state}: it will not become {' or '.join(sorted(wanted))}", ""
        if state == "Open" and self.now() >= job["due"]:
            return f"the offer {jid} expired unclaimed", f"`cancel {jid}` refunds the payment to your market credit"
        if state == "Claimed" and self.now() > job["due"]:
            return (f"the provider missed the deadline of job {jid}",
                    f"`expire {jid}` refunds the payment and pays you the provider's bond")
        return None

    # -- results --------------------------------------------------------------------------------------------
    def fetch(self, job_id: str, out: Path, *, timeout: float = 600.0, endpoint: str | None = None) -> Path:
        """Downloads the result with signed requests (a fresh signature per try) and checks it against the
        Merkle root the provider committed on chain; waits for the submission and for the provider to have
        it, up to ``timeout``. The endpoint: ``endpoint``, else the URL the offer was sent to, else the
        provider's registered one. A root mismatch raises ``ResultMismatch`` (the file is kept as
        ``<out>.mismatch``)."""
        job_id = normalise_job_id(job_id)
        started = time.monotonic()
        job = self.wait(job_id, {"Submitted", "Disputed", "Challenged", "Finalized"}, timeout=timeout)
        record = self.store.find(job_id)
        url = endpoint or (record.provider_url if record else None) or \
            self.chain.provider(job["provider"])["endpoint"]
        if not url:
            raise RequesterError(f"the provider {job['provider']} registered no endpoint", "pass --endpoint URL")
        signer = self._signer()

        def headers() -> dict[str, str]:
            from node.api.auth import sign_result_request

            return sign_result_request(signer, job_id, job["provider"], self.chain_id)

        path = download_result(url, job_id, headers, bytes.fromhex(job["resultRoot"][2:]), Path(out),
                               timeout=max(1.0, timeout - (time.monotonic() - started)), poll_s=self.poll_s,
                               max_bytes=_result_cap(record))
        self.store.note(job_id, result=str(Path(out).resolve()))
        return path

    def verify(self, job_id: str, result: Path, *, rtol: float | None = None, atol: float | None = None) -> Report:
        """Checks a result against the recorded offer (params, input): Freivalds for matmul-int8, a local
        re-run compared within tolerance for torch-export. A file that is not the one committed on chain is
        refused (it proves nothing about the provider)."""
        from node.compute.commitment import commit_file

        job_id = normalise_job_id(job_id)
        record = self.store.load(job_id)
        params = workloads.parse_params_json(record.params)
        input_path = Path(record.input_path) if record.input_path else None
        if input_path is not None:
            if not input_path.is_file():
                raise RequesterError(f"the input file {input_path} recorded for job {job_id} is gone; "
                                     "verification needs it")
            if file_sha256(input_path) != record.signed.offer.inputHash:
                raise RequesterError(f"{input_path} changed since the offer was signed (its SHA-256 is not the "
                                     "offer's inputHash): it cannot show what the provider was given")
        if not Path(result).is_file():
            raise RequesterError(f"no result file {result}", f"download it first: `fetch {job_id}`")
        root = self.job(job_id)["resultRoot"]
        mine = "0x" + commit_file(result).root.hex()
        if root != "0x" + "00" * 32 and mine != root:
            raise RequesterError(f"{result} is not the result committed on chain (root {mine}, chain {root})",
                                 f"download it with `fetch {job_id}`")
        if record.workload == "matmul-int8/v1":
            report = verify_matmul(params, input_path, Path(result))
        elif record.workload == "torch-export/v1":
            assert input_path is not None  # build_offer refuses torch-export offers without an input
            report = verify_torch_export(params, input_path, Path(result), rtol=rtol, atol=atol)
        else:
            raise RequesterError(f"no verifier for workload {record.workload}")
        report.metrics["result_root"] = mine
        report.metrics["committed_on_chain"] = mine == root
        self.store.note(job_id, verdict={"ok": report.ok, "detail": report.detail})
        return report

    # -- settling -------------------------------------------------------------------------------------------
    def accept(self, job_id: str) -> Step:
        """Pays the provider now instead of after the challenge window."""
        return self._settle(job_id, "accept")

    def dispute(self, job_id: str) -> Step:
        """Disputes a submitted result within the challenge window (the market's dispute bond, if any, is
        approved first)."""
        bond = self.chain.market.functions.disputeBond().call()
        if bond:
            self.ensure_allowance(bond)
        return self._settle(job_id, "dispute")

    def cancel(self, job_id: str) -> Step:
        """Withdraws an unclaimed (Open) offer; the payment goes to the requester's market credit."""
        return self._settle(job_id, "cancelOffer")

    def expire(self, job_id: str) -> Step:
        """Cleans up a lapsed job (anyone may): unclaimed past expiry, or claimed past the deadline (then the
        provider's bond goes to the requester too)."""
        return self._settle(job_id, "expire")

    def withdraw(self) -> tuple[int, Step | None]:
        """Moves the requester's market credit (refunds) to its wallet; (0, None) when there is none."""
        credit = self.chain.market.functions.balanceOf(self.address).call()
        if not credit:
            return 0, None
        return credit, self.chain.send(self._signer(), self.chain.market.functions.withdraw(), "withdraw")

    def _settle(self, job_id: str, function: str) -> Step:
        job_id = normalise_job_id(job_id)
        call = getattr(self.chain.market.functions, function)(bytes.fromhex(job_id[2:]))
        step = self.chain.send(self._signer(), call, function)
        self.store.note(job_id, **{f"{function}_tx": step.tx_hash})
        return step


def _workload_name(workload: bytes) -> str:
    """The registered name of a workload id; the id itself (0x-hex) when this version does not know it."""
    try:
        return workloads.get(workload).name
    except KeyError:
        return "0x" + workload.hex()


def _result_cap(record: JobRecord | None) -> int:
    """The most bytes a download may bring: exactly m*n*4 for matmul-int8 (its params fix the size)."""
    if record is not None and record.workload == "matmul-int8/v1":
        with contextlib.suppress(ValueError, KeyError, TypeError):
            params = workloads.parse_params_json(record.params)
            return 4 * int(params["m"]) * int(params["n"])
    return MAX_RESULT_BYTES
