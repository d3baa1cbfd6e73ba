"""One trial of the cheat simulation: a requester posts a job with gpunode's requester tools, a provider
(honest or cheating) claims and submits it, and the requester checks and, when it must, proves or disputes
it exactly as ``gpunode request run`` does; the outcome is read back from the chain.

Why each cheat, and the path that must catch it:

- ``one_element``: C with one element off by one. Download root matches, Freivalds fails, the element is
  located and proven wrong on chain (``challenge``).
- ``random_bytes``: no work, random bytes of the right size committed and served. Same path.
- ``serve_other``: random bytes committed, the correct file served (hoping nobody checks the root). The
  download does not match the root, so the requester audits; the provider's node reveals the committed
  chunk (it kept it) and the reveal itself proves the fraud.
- ``reuse_old``: an earlier job's result (same shape) committed and served. Freivalds fails: challenge.
- ``withhold``: the right result committed, nothing served, no reveal. Audit, then ``revealTimeout``.

Float work (torch-export) has no on-chain recomputation: a wrong or missing result is disputed and three
mediators (node.mediator) each check it; two signed rulings resolve it through MediatorSet.
Honest providers must verify, and challenges or audits of their results must clear them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.cheat_world import REVEAL_WINDOW_S, TOKEN, Provider, World, wait_until
from node.chain.fraud import MatmulParams
from node.compute.commitment import commit_bytes
from node.jobs.journal import JobSource
from node.jobs.state import JobState
from node.requester.errors import RequesterError

CHEATS = ("one_element", "random_bytes", "serve_other", "reuse_old", "withhold")
ANSWERS = {"honest": True, "one_element": True, "random_bytes": True, "serve_other": True, "reuse_old": True,
           "withhold": False}
PAYMENT = 20 * TOKEN
BOND = 20 * TOKEN
FETCH_TIMEOUT_S = 1.5
OFFER_LIFETIME_S = 60 * 24 * 3600  # chain time jumps past reveal windows; offers must outlive them


@dataclass
class Trial:
    """What one job showed: was the cheat detected off chain, was the provider slashed, and the gas of
    every verification transaction it took (name -> gas used)."""

    workload: str
    provider: str
    detected: bool = False
    slashed: bool = False
    final_state: str = ""
    path: str = ""  # how it was settled: accept, challenge, audit+reveal, audit+timeout, dispute+mediators
    cleared: list[str] = field(default_factory=list)  # honest checks sent that the contract rejected
    gas: dict[str, int] = field(default_factory=dict)
    error: str = ""
    seconds: float = 0.0  # wall time of the whole trial, both sides and every transaction


# -- the provider's side ---------------------------------------------------------------------------------------


def _record(prov: Provider, signed: Any, kept: Path, root: bytes, due: int) -> None:
    """The job as the provider's node journal holds it after submitting, so its Revealer can answer."""
    if prov.journal is None:
        return
    o, job_id, S = signed.offer, "0x" + signed.job_id.hex(), JobState
    prov.journal.record_seen(job_id, requester=o.requester, provider=o.provider, workload=o.workload,
                             payment=o.payment, bond=o.providerBond, expiry=o.expiry, offer_json=signed.to_json(),
                             source=JobSource.CHAIN)
    for step in (S.VALIDATED, S.CLAIMED, S.FETCHING, S.RUNNING, S.COMMITTED, S.SUBMITTED):
        fields = ({"deadline": due} if step is S.CLAIMED else
                  {"result_root": "0x" + root.hex(), "result_path": str(kept)} if step is S.COMMITTED else {})
        prov.journal.transition(job_id, step, reason=f"simulation: {step}", **fields)


def _provide(w: World, prov: Provider, signed: Any, committed: bytes, served: bytes | None, kept: bytes) -> None:
    """Claim, keep a file for reveals, submit the committed root, serve what the strategy serves."""
    job_id = "0x" + signed.job_id.hex()
    folder = w.root / f"files-{prov.name}"
    folder.mkdir(exist_ok=True)
    w.proto.claim(prov.key, signed.job_id)
    kept_path = folder / f"{job_id}.kept"
    kept_path.write_bytes(kept)
    served_path = None
    if served is not None:
        served_path = folder / f"{job_id}.served"
        served_path.write_bytes(served)
    root = commit_bytes(committed).root
    w.proto.submit(prov.key, signed.job_id, root, len(committed), f"{prov.endpoint}/results/{job_id}")
    w.server.serve(prov.name, job_id, served_path)
    _record(prov, signed, kept_path, commit_bytes(kept).root, int(w.proto.job(signed.job_id)["due"]))


def int8_files(cheat: str, honest: bytes, old: bytes, rng: random.Random) -> tuple[bytes, bytes | None, bytes]:
    """(committed, served or None, kept for reveals) for a matmul-int8 result."""
    if cheat == "honest":
        return honest, honest, honest
    if cheat == "one_element":
        at = 4 * rng.randrange(len(honest) // 4)
        value = int.from_bytes(honest[at:at + 4], "little", signed=True) + rng.choice((-1, 1))
        wrong = honest[:at] + value.to_bytes(4, "little", signed=True) + honest[at + 4:]
        return wrong, wrong, wrong
    if cheat == "random_bytes":
        junk = rng.randbytes(len(honest))
        return junk, junk, junk
    if cheat == "serve_other":
        junk = rng.randbytes(len(honest))
        return junk, honest, junk
    if cheat == "reuse_old":
        return old, old, old
    if cheat == "withhold":
        return honest, None, honest
    raise ValueError(f"unknown cheat {cheat}")


# -- the requester's side --------------------------------------------------------------------------------------


def _reveal_or_timeout(w: World, req: Any, prov: Provider, job_id: str, t: Trial) -> None:
    """After a demand: the provider's node answers (if it runs one); past the window, revealTimeout."""
    proofs = req.proofs
    if prov.revealer is not None:
        answer = w.runner.run(prov.revealer.answer(job_id))
        if answer == "sent" and wait_until(lambda: proofs.pending(job_id) is None, timeout=30):
            logs = proofs.verifier.events.ChunkRevealed().get_logs(
                from_block=w.deployment.deploy_block, argument_filters={"jobId": bytes.fromhex(job_id[2:])})
            if logs:
                t.gas["reveal"] = w.gas_of(logs[-1]["transactionHash"])
                t.path += "+reveal"
                return
    if proofs.pending(job_id) is not None:
        w.advance(REVEAL_WINDOW_S + 1)
        out = proofs.reveal_timeout(job_id)
        t.gas["revealTimeout"] = out.gas_used
        t.path += "+timeout"


def int8_trial(w: World, req: Any, prov: Provider, cheat: str, dims: tuple[int, int, int], seed: int,
               rng: random.Random, old: dict[tuple[int, int, int], bytes], *, challenge_honest: bool = False,
               audit_honest: bool = False) -> Trial:
    from node.compute.workloads.generator import generate_ab
    from node.compute.workloads.matmul_int8 import matmul_exact
    from node.requester.terms import MATMUL, encode_params

    m, k, n = dims
    t = Trial("matmul-int8", cheat)
    signed = req.build_offer(MATMUL, encode_params({"m": m, "k": k, "n": n, "seed": seed}), payment=PAYMENT,
                             bond=BOND, max_duration=3600, expires_in=OFFER_LIFETIME_S)
    job_id, _ = req.post(signed)
    p = MatmulParams.from_params(signed.params)
    a, b = generate_ab(p.seed, m, k, n, "cpu")
    honest = matmul_exact(a, b)[0].contiguous().numpy().astype("<i4").tobytes()
    if dims not in old:  # the first reuse_old has no earlier job of this shape: an earlier seed's result
        a2, b2 = generate_ab(seed ^ 0x5EED, m, k, n, "cpu")
        old[dims] = matmul_exact(a2, b2)[0].contiguous().numpy().astype("<i4").tobytes()
    _provide(w, prov, signed, *int8_files(cheat, honest, old[dims], rng))
    old[dims] = honest
    out = w.root / f"req-results/{job_id}.bin"
    try:
        req.fetch(job_id, out, timeout=FETCH_TIMEOUT_S, endpoint=prov.endpoint)
        fetched = True
    except RequesterError:  # not served, or not the committed bytes (ResultMismatch)
        fetched = False
    if not fetched:
        t.detected, t.path = True, "audit"
        t.gas["audit"] = req.proofs.audit(job_id).gas_used
        _reveal_or_timeout(w, req, prov, job_id, t)
    else:
        report = req.verify(job_id, out)
        if not report.ok:
            t.detected, t.path = True, "challenge"
            first = report.metrics.get("first_wrong")
            element = (first["row"], first["col"]) if first else None
            outcome = req.proofs.challenge(job_id, out, element)
            t.gas["challenge"] = outcome.gas_used
        else:
            t.path = "accept"
            if challenge_honest:  # a right element: the contract must clear it, the bond goes to the provider
                element = (rng.randrange(m), rng.randrange(n))
                outcome = req.proofs.challenge(job_id, out, element, force=True)
                t.gas["challenge(cleared)"] = outcome.gas_used
                t.cleared.append("challenge" if outcome.fraud is False else "challenge:FRAUD")
                t.path = "challenge(cleared)+" + t.path
            if audit_honest:
                before = t.path
                t.path = "audit"
                t.gas["audit"] = req.proofs.audit(job_id).gas_used
                _reveal_or_timeout(w, req, prov, job_id, t)
                t.cleared.append("audit")
                t.path += "+" + before
            if req.job(job_id)["state"] == "Submitted":
                req.accept(job_id)
    t.final_state = req.job(job_id)["state"]
    t.slashed = t.final_state == "Slashed"
    return t


# -- float work -------------------------------------------------------------------------------------------------


def float_files(cheat: str, honest: bytes, old: bytes, rng: random.Random) -> tuple[bytes, bytes | None, bytes]:
    """(committed, served or None, kept) for a torch-export result (a safetensors file)."""
    if cheat == "one_element":
        wrong = _perturb(honest, rng)
        return wrong, wrong, wrong
    return int8_files(cheat, honest, old, rng)


def _perturb(blob: bytes, rng: random.Random) -> bytes:
    """One output value moved far outside any tolerance."""
    from safetensors.torch import load, save

    tensors = load(blob)
    name = rng.choice(sorted(tensors))
    t = tensors[name].clone()
    flat = t.view(-1)
    at = rng.randrange(flat.numel())
    flat[at] = flat[at] + 1.0 + 2 * flat[at].abs()
    tensors[name] = t
    return save(tensors)


def float_trial(w: World, req: Any, prov: Provider, cheat: str, bundle: tuple[Path, bytes], old: list[bytes],
                rng: random.Random, mediate: Any, *, dispute_honest: bool = False) -> Trial:
    """``mediate(job_id, evidence_path_or_None, bundle_path) -> (providerWasRight, resolve gas)``."""
    from node.compute.workloads import parse_params_json
    from node.compute.workloads.torch_export import TorchExport
    from node.requester.terms import TORCH_EXPORT

    path, params = bundle
    t = Trial("torch-export", cheat)
    signed = req.build_offer(TORCH_EXPORT, params, payment=PAYMENT, bond=BOND, max_duration=3600,
                             expires_in=OFFER_LIFETIME_S, input_path=path, input_uri="http://127.0.0.1:9/input")
    job_id, _ = req.post(signed)
    honest_path = w.root / f"honest-{job_id}.safetensors"
    TorchExport().run(parse_params_json(params), str(path), str(honest_path), "cpu")
    honest = honest_path.read_bytes()
    earlier = old[-1] if old else honest[::-1]
    _provide(w, prov, signed, *float_files(cheat, honest, earlier, rng))
    old.append(honest)
    out = w.root / f"req-results/{job_id}.safetensors"
    evidence: Path | None = None
    try:
        req.fetch(job_id, out, timeout=FETCH_TIMEOUT_S, endpoint=prov.endpoint)
        evidence = out
        ok = req.verify(job_id, out).ok
    except RequesterError:
        mismatch = out.with_name(out.name + ".mismatch")
        evidence, ok = (mismatch if mismatch.is_file() else None), False
    t.detected = not ok
    if ok and not dispute_honest:
        req.accept(job_id)
        t.path = "accept"
    else:
        req.dispute(job_id)
        right, gas = mediate(job_id, evidence, path)
        t.gas["resolve"] = gas
        t.path = "dispute+mediators" if not ok else "dispute(griefing)+mediators"
        if ok:
            t.cleared.append("dispute" if right else "dispute:SLASHED")
    t.final_state = req.job(job_id)["state"]
    t.slashed = t.final_state == "Slashed"
    return t
