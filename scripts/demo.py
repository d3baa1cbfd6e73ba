"""``make demo``: the real provider node earning on an embedded local chain, in a few minutes on a CPU.

1. Starts anvil (1 s blocks), deploys the contracts and funds a requester and a provider.
2. Provisions the provider as an operator would: a keystore, a benchmark of this machine, registration
   with the benchmark's hash, stake, and a config file. Then starts ``gpunode run`` as a daemon.
3. A requester posts a mix of jobs: matmul-int8 of three sizes and a torch-export model (its bundle served
   from a local HTTP server) on chain, one direct offer to the node's API, one offer priced below the
   node's floor and one direct offer with a forged signature.
4. Shows each job's progress; the good ones are claimed, run, committed and submitted, the chain clock
   jumps past the challenge window, and the node finalizes them and pays out to the payout address.
   The bad ones are rejected with their reasons.
5. Downloads one result with a signed request and checks it against the root on chain, stops the node
   with SIGTERM and prints a summary: jobs, earnings, gas per job and time per stage.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import threading
import time
import warnings
from collections import defaultdict
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from eth_account import Account
from web3 import Web3

from node.api.auth import sign_result_request
from node.chain.deploy import ProtocolParams
from node.chain.devnet import Anvil
from node.chain.protocol import Protocol
from node.compute.commitment import commit_bytes
from node.requester.verify import verify_matmul
from scripts.devnet import start_devnet
from scripts.localnode import TOKEN, envelope, job_id, offer, provision

WINDOW = 120
STAGES = (("wait for a slot + claim", "validated", "claimed"), ("fetch", "fetching", "running"),
          ("run", "running", "committed"),
          ("submit", "committed", "submitted"), ("finalize", "submitted", "finalized"), ("payout", "finalized", "paid"))


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def serve_dir(path: Path) -> tuple[ThreadingHTTPServer, str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def model_bundle(path: Path) -> bytes:
    """A small MLP exported with torch.export: what a requester ships for a torch-export/v1 job."""
    import torch

    warnings.filterwarnings("ignore", category=FutureWarning)  # torch.export's own deprecation chatter

    from node.compute.workloads.torch_export import make_bundle

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10)).eval()
    make_bundle(model, [torch.randn(32, 64)], str(path), input_names=["x"])
    return path.read_bytes()


def matmul(size: int, seed: int) -> bytes:
    return json.dumps({"m": size, "k": size, "n": size, "seed": seed}, separators=(",", ":")).encode()


def gas_of(w3: Web3, tx_hash: bytes) -> int:
    return w3.eth.get_transaction_receipt(tx_hash)["gasUsed"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep", type=Path, help="keep the node's data directory here instead of a temp dir")
    args = ap.parse_args(argv)
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="gpunode-demo-")) if args.keep is None else args.keep
    work.mkdir(parents=True, exist_ok=True)
    say = partial(print, flush=True)
    with Anvil(block_time=1) as anvil:
        say(f"[1/5] local chain: anvil at {anvil.url} (1 s blocks); deploying")
        dep, keys = start_devnet(anvil, 4, 1_000_000, ProtocolParams(challenge_window_s=WINDOW),
                                 deployments_dir=work, log=lambda *_: None)
        w3 = Web3(Web3.HTTPProvider(anvil.url))
        proto = Protocol(w3, dep)
        requester, operator = keys[1], keys[2]
        payout = Account.create().address  # a fresh (cold) address: its token balance is exactly the earnings
        say("[2/5] provider: keystore, benchmark of this machine (about 20 s), registration, 1000 GPU stake")
        node = provision(proto, anvil.url, work / f"{dep.chain_id}.json", operator, payout, work / "node",
                         bench=work / "bench.json")
        bench = json.loads((work / "bench.json").read_text())
        for d in bench["devices"]:
            say(f"      {d['device']}: {d['name']}  int8 {d['int8_tops']:.4f} TOPS, {d['float_kind']} "
                f"{d['float_tflops']:.3f} TFLOPS  (benchmark hash {bench['benchmark_hash'][:18]}…)")
        node.start()
        say(f"      node {node.address} running, API {node.api}, payout address {payout}")
        try:
            return run_jobs(proto, node, requester, keys, work, say, started)
        finally:
            code = node.stop()
            say(f"node stopped with SIGTERM: exit code {code}")


def run_jobs(proto, node, requester, keys, work, say, started) -> int:
    w3 = proto.w3
    proto.approve(requester, proto.deployment.market, 2**256 - 1)
    inputs = work / "inputs"
    inputs.mkdir(exist_ok=True)
    bundle = model_bundle(inputs / "mlp.safetensors")
    server, base = serve_dir(inputs)
    say("[3/5] requester posts jobs")
    jobs: dict[str, str] = {}
    nonce = iter(range(1, 100))
    for size in (256, 512, 1024):
        o, sig = offer(proto, requester, matmul(size, size), nonce=next(nonce), payment=2 * TOKEN)
        proto.post(requester, o, matmul(size, size), sig)
        jobs[job_id(proto, o)] = f"matmul-int8 {size}³"
    params = b'{"inputs":["x"]}'
    o, sig = offer(proto, requester, params, nonce=next(nonce), payment=2 * TOKEN, workload="torch-export/v1",
                   input_uri=f"{base}/mlp.safetensors", input_hash=hashlib.sha256(bundle).digest())
    proto.post(requester, o, params, sig)
    jobs[job_id(proto, o)] = "torch-export MLP"
    o, sig = offer(proto, requester, matmul(128, 1), nonce=next(nonce), payment=10**9)
    proto.post(requester, o, matmul(128, 1), sig)
    cheap = job_id(proto, o)
    jobs[cheap] = "below the price floor"
    o, sig = offer(proto, requester, matmul(192, 2), nonce=next(nonce), payment=2 * TOKEN, provider=node.address)
    status, body, _ = node.request("/offers", body=envelope(proto, o, matmul(192, 2), sig))
    say(f"      direct offer to the node's API: HTTP {status} {json.loads(body).get('state')}")
    jobs[job_id(proto, o)] = "matmul-int8 192³ (direct)"  # claimSigned: post and claim in one tx
    forged, _ = offer(proto, requester, matmul(64, 3), nonce=next(nonce), payment=2 * TOKEN)
    status, body, _ = node.request("/offers", body=envelope(proto, forged, matmul(64, 3), proto.sign(keys[0], forged)))
    reply = json.loads(body)
    say(f"      forged direct offer: HTTP {status} rejected: {reply.get('code')}: {reply.get('reason')}")
    if status != 422:
        say("FAILED: the forged offer was not rejected")
        return 1

    say("[4/5] progress")
    good = [j for j in jobs if j != cheap]
    seen: dict[str, str] = {}

    def progress(targets: set[str]) -> bool:
        listing = node.jobs()
        for j, label in jobs.items():
            state = listing.get(j, {}).get("state", "?")
            if seen.get(j) != state:
                seen[j] = state
                extra = f" ({listing[j]['code']}: {listing[j]['reason']})" if state == "rejected" else ""
                say(f"      {j[:12]}…  {label:<28} {state}{extra}")
        return all(listing.get(j, {}).get("state") in targets for j in good) and \
            listing.get(cheap, {}).get("state") == "rejected"

    node.wait(lambda: progress({"submitted", "finalized", "paid"}), 300, "every good job submitted", poll=0.5)
    say(f"      all results committed on chain; the chain clock jumps {WINDOW} s past the challenge window")
    w3.provider.make_request("evm_increaseTime", [WINDOW + 1])
    w3.provider.make_request("evm_mine", [])
    node.wait(lambda: progress({"paid"}), 180, "every good job paid", poll=0.5)
    server.shutdown()

    say("[5/5] checks and summary")
    first = good[0]
    headers = sign_result_request(requester, first, node.address, proto.deployment.chain_id)
    status, result, _ = node.request(f"/results/{first}", headers=headers)
    root = proto.job(bytes.fromhex(first[2:]))["resultRoot"]
    ok = status == 200 and commit_bytes(result).root == root
    say(f"      result of {first[:12]}… downloaded with the requester's signature: {len(result):,} bytes, "
        f"root {'matches' if ok else 'DOES NOT MATCH'} the chain")
    if ok:  # what `gpunode request verify` does: an exact Freivalds check against the job's own inputs
        (work / "result.bin").write_bytes(result)
        report = verify_matmul(json.loads(matmul(256, 256)), None, work / "result.bin")
        ok = report.ok
        say(f"      verified as the requester tools do: {'right' if ok else 'WRONG'}: {report.detail}")
    stranger = sign_result_request(keys[0], first, node.address, proto.deployment.chain_id)
    code = node.request(f"/results/{first}", headers=stranger)[0]
    say(f"      the same download signed by someone else: HTTP {code}")
    summary(proto, node, jobs, good, cheap, say)
    say(f"done in {time.monotonic() - started:.0f} s")
    return 0 if ok else 1


def summary(proto, node, jobs, good, cheap, say) -> None:
    w3, market = proto.w3, proto.market
    gas: dict[str, int] = defaultdict(int)
    shared: dict[bytes, int] = defaultdict(int)
    for name in ("JobClaimed", "ResultSubmitted", "JobFinalized"):
        for ev in getattr(market.events, name)().get_logs(from_block=0):
            j = "0x" + ev["args"]["jobId"].hex()
            if j not in good:
                continue
            if name == "JobFinalized":
                shared[ev["transactionHash"]] += 1
            else:
                gas[j] += gas_of(w3, ev["transactionHash"])
    for tx, n in shared.items():  # a finalizeMany pays for several jobs: share its gas
        per = gas_of(w3, tx) // n
        for ev in market.events.JobFinalized().get_logs(from_block=0):
            if ev["transactionHash"] == tx and "0x" + ev["args"]["jobId"].hex() in good:
                gas["0x" + ev["args"]["jobId"].hex()] += per
    withdraws = market.events.Withdrawn().get_logs(from_block=0)
    withdraws = [ev for ev in withdraws if ev["args"]["account"] == node.payout]
    withdraw_gas = sum(gas_of(w3, ev["transactionHash"]) for ev in withdraws)
    stages: dict[str, list[float]] = defaultdict(list)
    say(f"      {'job':<14} {'workload':<28} {'state':<6} {'gas':>9}")
    for j in good:
        at = {h["to"]: h["at"] for h in node.job(j)["history"]}
        for stage, a, b in STAGES:
            if a in at and b in at:
                stages[stage].append(at[b] - at[a])
        say(f"      {j[:12]}…  {jobs[j]:<28} {node.jobs()[j]['state']:<6} {gas[j]:>9,}")
    say(f"      {cheap[:12]}…  {jobs[cheap]:<28} rejected (below_price_floor)")
    status = node.get("/status")
    earned = int(status["earnings"]["withdrawn_units"])
    say(f"      earnings paid out to {node.payout}: {earned / TOKEN:g} GPU (token balance "
        f"{proto.balance(node.payout) / TOKEN:g} GPU)")
    say(f"      gas per job (claim + submit + share of finalizeMany): {sum(gas.values()) // len(good):,}; "
        f"payout withdrawals: {withdraw_gas:,} gas in {len(withdraws)} tx")
    say("      time per stage (mean s): " + ", ".join(
        f"{s} {sum(v) / len(v):.2f}" for s, v in stages.items() if v) + " (finalize includes the window jump)")


if __name__ == "__main__":
    sys.exit(main())
