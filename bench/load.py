"""Load: a real node (``gpunode run``) on anvil under 1,000 open offers posted on chain at once and a stream of
direct offers to ``POST /offers``, watched by a separate probe process (``/healthz`` latency, RSS from /proc).

What it shows: the node stays responsive (every /healthz answered; latency percentiles), its memory stays
flat over the run, and no offer is processed twice (one journal row and one decision per job id, the
offers_seen metric equal to the distinct offers sent, at most one JobClaimed per job on chain).

The mix keeps the node from executing thousands of jobs: most offers are valid (genuine signatures, fresh
nonces, good params) but refused by policy, either under-priced or addressed to another registered provider;
a few (``--accept``) are acceptable and are claimed and run. Some direct offers are sent again later in the
stream (a resend must answer the same and count nothing), a few are sent several times concurrently, and
after the run a sample of both kinds is replayed to POST /offers. Everything is signed before the clock starts,
so the sender spends its time sending. Seeded: the seed is printed so a failing mix can be replayed.

    .venv/bin/python -m bench.load [--onchain 1000] [--rate 200] [--seconds 30] [--out FILE] [--seed N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import requests
from eth_account import Account
from eth_utils import keccak
from web3 import Web3

from bench.load_probe import journal, latency_ms, offers_seen, probe, slope_mib_per_min, window
from node.chain.deploy import ProtocolParams
from node.chain.devnet import Anvil
from node.chain.offers import ZERO_ADDRESS, JobOffer, workload_id
from node.chain.protocol import Capacity, Protocol
from node.chain.verify import SignedOffer
from scripts.devnet import start_devnet
from scripts.localnode import LocalNode, provision

TOKEN = 10**18
GWEI = 10**9
UNDERPAID = 1_000  # base units: far below any price floor, so policy refuses it after every other check
EXPECT = {"accept": (202, None), "underpriced": (422, "below_price_floor"), "other": (422, "not_addressed_to_us")}
DONE = ("submitted", "finalized", "paid")
FLAT_MIB = 8.0  # growth over a run below this (or 3 %) reads as flat: allocator noise, caches
OPERATOR, OTHER, REQUESTERS = 1, 2, range(3, 8)  # dev key indexes: our node, another provider, requesters


@dataclass
class Config:
    onchain: int = 1000
    rate: float = 200.0
    seconds: float = 30.0
    accept: int = 5  # acceptable offers on each path
    other_share: float = 0.3  # of the refused offers: addressed to another provider (the rest under-priced)
    dup_share: float = 0.02  # of direct sends: a resend of an offer sent at least a second earlier
    races: int = 5  # fresh offers each sent 4 times at once
    probe_interval: float = 0.05
    seed: int = 8
    bench: Path | None = None  # a `gpunode bench --quick` file to reuse
    workdir: Path | None = None


@dataclass
class Offer:
    job_id: str
    kind: str  # "accept", "underpriced" or "other" (addressed to another provider): see EXPECT
    signed: SignedOffer
    body: bytes  # the POST /offers wire form, made before the clock starts


@dataclass
class Result:
    config: Config
    figures: dict[str, str] = field(default_factory=dict)
    checks: dict[str, tuple[bool, str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(ok for ok, _ in self.checks.values())

    def markdown(self) -> str:
        c = self.config
        lines = [f"Load run: {c.onchain} on-chain offers, {c.rate:g} direct offers/s for {c.seconds:g} s, "
                 f"seed {c.seed}.", "", "| measure | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in self.figures.items()]
        lines += ["", "| check | result | detail |", "|---|---|---|"]
        lines += [f"| {k} | {'pass' if ok else '**FAIL**'} | {d} |" for k, (ok, d) in self.checks.items()]
        return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------- the plan
def _offer(proto: Protocol, key: str, kind: str, nonce: int, now: int, other: str) -> Offer:
    params = json.dumps({"m": 32, "k": 32, "n": 32, "seed": nonce % 10**6}, separators=(",", ":")).encode()
    pay = UNDERPAID if kind == "underpriced" else TOKEN
    o = JobOffer(requester=proto.account(key).address, provider=other if kind == "other" else ZERO_ADDRESS,
                 workload=workload_id("matmul-int8/v1"), paramsHash=keccak(params), inputHash=b"\x00" * 32,
                 inputURI="", payment=pay, providerBond=TOKEN if kind == "accept" else 0, maxDuration=3600,
                 expiry=now + 7200, nonce=nonce)
    signed = SignedOffer(o, proto.sign(key, o), proto.deployment.chain_id, proto.deployment.market, params)
    return Offer("0x" + signed.job_id.hex(), kind, signed, json.dumps(signed.to_json()).encode())


def _kinds(rng: random.Random, count: int, accept: int, other_share: float) -> list[str]:
    accepted = set(rng.sample(range(count // 10, max(count // 2, count // 10 + accept)), min(accept, count)))
    return ["accept" if i in accepted else "other" if rng.random() < other_share else "underpriced"
            for i in range(count)]


def plan_chain(proto: Protocol, keys: list[str], cfg: Config, rng: random.Random, other: str
               ) -> tuple[list[Offer], list[bytes]]:
    """The on-chain offers and their signed postOffer transactions (sender = requester, explicit nonces)."""
    now = proto.w3.eth.get_block("latest")["timestamp"]
    offers = [_offer(proto, keys[REQUESTERS[i % len(REQUESTERS)]], kind, 1_000_000 + i, now, other)
              for i, kind in enumerate(_kinds(rng, cfg.onchain, cfg.accept, cfg.other_share))]
    nonces = {r: proto.w3.eth.get_transaction_count(proto.account(keys[r]).address, "pending") for r in REQUESTERS}

    def call(o: Offer) -> str:
        return proto.market.encode_abi("postOffer", args=[tuple(o.signed.offer.as_struct().values()),
                                                          o.signed.params, o.signed.signature])

    sender = proto.account(keys[REQUESTERS[0]]).address
    gas = int(proto.w3.eth.estimate_gas({"from": sender, "to": proto.market.address,
                                         "data": call(offers[0])}) * 1.5)
    raw = []
    for i, o in enumerate(offers):
        r = REQUESTERS[i % len(REQUESTERS)]
        tx = {"to": proto.market.address, "data": call(o), "gas": gas, "value": 0,
              "nonce": nonces[r], "chainId": proto.deployment.chain_id, "type": 2,
              "maxFeePerGas": 100 * GWEI, "maxPriorityFeePerGas": GWEI}
        nonces[r] += 1
        raw.append(bytes(Account.sign_transaction(tx, keys[r]).raw_transaction))
    return offers, raw


def plan_direct(proto: Protocol, keys: list[str], cfg: Config, rng: random.Random, other: str, first: int
                ) -> tuple[list[Offer], list[Offer]]:
    """The send schedule (resends included) and the concurrent-duplicate offers, all signed now."""
    now = proto.w3.eth.get_block("latest")["timestamp"]
    count, step = round(cfg.rate * cfg.seconds), max(1, int(cfg.rate))  # a resend comes >= 1 s later
    kinds = iter(_kinds(rng, count, cfg.accept, cfg.other_share))
    schedule: list[Offer] = []
    for i in range(count):
        if i >= step and rng.random() < cfg.dup_share:
            schedule.append(schedule[rng.randrange(0, i - step + 1)])
        else:
            key = keys[REQUESTERS[i % len(REQUESTERS)]]
            schedule.append(_offer(proto, key, next(kinds), first + i, now, other))
    races = [_offer(proto, keys[REQUESTERS[0]], "underpriced", first + count + i, now, other)
             for i in range(cfg.races)]
    return schedule, races


# ------------------------------------------------------------------------------------------------ senders
def send_raw(url: str, raw: list[bytes], batch: int = 50) -> list[str]:
    """eth_sendRawTransaction in JSON-RPC batches, without waiting for receipts; returns the errors."""
    errors, session = [], requests.Session()
    for lo in range(0, len(raw), batch):
        calls = [{"jsonrpc": "2.0", "id": lo + i, "method": "eth_sendRawTransaction", "params": ["0x" + r.hex()]}
                 for i, r in enumerate(raw[lo:lo + batch])]
        errors += [str(a["error"]) for a in session.post(url, json=calls, timeout=60).json() if "error" in a]
    return errors


async def _post(session: aiohttp.ClientSession, api: str, offer: Offer, out: list) -> None:
    t0 = time.perf_counter()
    try:
        async with session.post(api + "/offers", data=offer.body,
                                headers={"Content-Type": "application/json"}) as r:
            body = await r.json(content_type=None)
            out.append((offer, r.status, body.get("code"), body.get("accepted"), time.perf_counter() - t0))
    except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
        out.append((offer, type(exc).__name__, None, None, time.perf_counter() - t0))


async def stream(api: str, schedule: list[Offer], rate: float) -> tuple[list, float, float]:
    """Open loop: offer i leaves at start + i/rate whatever the replies do (up to 64 connections)."""
    out: list = []
    timeout = aiohttp.ClientTimeout(total=600)  # a backlog waits its turn: a slow reply is a figure
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64), timeout=timeout) as session:
        start, tasks = time.perf_counter(), []
        for i, offer in enumerate(schedule):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(_post(session, api, offer, out)))
        sent = time.perf_counter() - start
        await asyncio.gather(*tasks)
        return out, sent, time.perf_counter() - start


async def burst(api: str, offers: list[Offer], copies: int) -> list:
    out: list = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        await asyncio.gather(*(_post(session, api, o, out) for o in offers for _ in range(copies)))
    return out


# -------------------------------------------------------------------------------------------------- a run
@dataclass
class Observed:
    """What one run saw: the plan, the replies, the probe's series, the journal, the chain and the metrics."""

    chain_offers: list[Offer]
    distinct: list[Offer]  # the direct offers, each once
    races: list[Offer]
    accept: list[Offer]  # the acceptable ones, the warm-up job included
    marks: dict[str, float]  # unix times: start, stream_end, chain_decided, end
    replies: list  # (offer, status, code, accepted, seconds) per direct send of the stream
    sent_s: float
    done_s: float
    race_replies: list
    replay_replies: list
    seen: list[dict[str, float]]  # offers_seen before the races, after them, after the replay
    send_errors: list[str]
    probed: dict[str, list]
    posted: set[str] = field(default_factory=set)
    claims: Counter = field(default_factory=Counter)
    states: dict[str, str] = field(default_factory=dict)
    twice: list = field(default_factory=list)
    rows: int = 0


def run(cfg: Config, log: Any = print) -> Result:
    """Starts anvil (1 s blocks), deploys, provisions and starts a node, drives the load, stops everything."""
    log(f"load: seed {cfg.seed} (replay with --seed {cfg.seed})")
    with tempfile.TemporaryDirectory(prefix="gpunode-load-") as tmp, Anvil(block_time=1) as anvil:
        workdir = cfg.workdir or Path(tmp)
        dep, keys = start_devnet(anvil, 8, 1_000_000, ProtocolParams(), deployments_dir=workdir, log=lambda *_: None)
        proto = Protocol(Web3(Web3.HTTPProvider(anvil.url, request_kwargs={"timeout": 60})), dep)
        for r in REQUESTERS:
            proto.approve(keys[r], dep.market, 2**256 - 1)
        other = proto.account(keys[OTHER]).address  # registered, so offers addressed to it can be posted
        proto.register(keys[OTHER], Account.create().address, Capacity("cpu (another provider)", 1, 0, 0, 0,
                       b"\x00" * 32), price_floor=10**12, endpoint="http://127.0.0.1:9")
        node = provision(proto, anvil.url, workdir / f"{dep.chain_id}.json", keys[OPERATOR], Account.create().address,
                         workdir / "node", bench=cfg.bench or workdir / "bench-quick.json")
        node.start()
        try:
            seen = drive(cfg, random.Random(cfg.seed), proto, keys, anvil.url, node, other, workdir, log)
        finally:
            node.stop()
        seen.states, seen.twice, seen.rows = journal(node)
        return report(cfg, seen)


def drive(cfg: Config, rng: random.Random, proto: Protocol, keys: list[str], rpc_url: str, node: LocalNode,
          other: str, workdir: Path, log: Any) -> Observed:
    # One job first, so the worker has imported torch and run a matmul before memory is watched: the trend
    # over the run is then the node's, not the worker's one-time start-up.
    now = proto.w3.eth.get_block("latest")["timestamp"]
    warmup = _offer(proto, keys[REQUESTERS[0]], "accept", 999_999, now, other)
    proto.post(keys[REQUESTERS[0]], warmup.signed.offer, warmup.signed.params, warmup.signed.signature)
    node.wait(lambda: journal(node)[0].get(warmup.job_id) in DONE, 600, "the warm-up job", poll=0.5)
    t0 = time.perf_counter()
    chain_offers, raw = plan_chain(proto, keys, cfg, rng, other)
    schedule, races = plan_direct(proto, keys, cfg, rng, other, first=2_000_000)
    distinct = list({o.job_id: o for o in schedule}.values())
    accept = [o for o in [warmup, *chain_offers, *distinct] if o.kind == "accept"]
    log(f"load: signed {len(raw)} postOffer txs and {len(distinct)} direct offers in {time.perf_counter() - t0:.1f} s")

    ctx = multiprocessing.get_context("spawn")
    stop, probe_file = ctx.Event(), workdir / "probe.json"
    prober = ctx.Process(target=probe, args=(node.api, node.proc.pid, str(probe_file), cfg.probe_interval, stop))
    prober.start()
    marks: dict[str, float] = {}
    try:
        time.sleep(4)  # the probe starts, then an idle baseline
        marks["start"] = time.time()
        send_errors: list[str] = []
        sender = threading.Thread(target=lambda: send_errors.extend(send_raw(rpc_url, raw)))
        sender.start()
        replies, sent_s, done_s = asyncio.run(stream(node.api, schedule, cfg.rate))
        marks["stream_end"] = time.time()
        sender.join()
        log(f"load: stream done ({len(replies)} replies in {done_s:.1f} s); waiting for the chain offers")
        node.wait(lambda: all(journal(node)[0].get(o.job_id, "seen") != "seen" for o in chain_offers), 600,
                  "every on-chain offer decided", poll=0.5)
        marks["chain_decided"] = time.time()
        seen = [offers_seen(node)]
        race_replies = asyncio.run(burst(node.api, races, 4))
        seen.append(offers_seen(node))
        replay = rng.sample(chain_offers, min(50, len(chain_offers))) + rng.sample(distinct, min(50, len(distinct)))
        replay_replies = asyncio.run(burst(node.api, replay + accept, 1))
        seen.append(offers_seen(node))
        node.wait(lambda: all(journal(node)[0].get(o.job_id) in DONE for o in accept), 600,
                  "the acceptable jobs to be submitted", poll=1.0)
        marks["end"] = time.time()
    finally:
        stop.set()
        prober.join(30)
        if prober.is_alive():
            prober.kill()
    out = Observed(chain_offers, distinct, races, accept, marks, replies, sent_s, done_s, race_replies,
                   replay_replies, seen, send_errors, json.loads(probe_file.read_text()))
    since = proto.deployment.deploy_block
    out.claims = Counter("0x" + e["args"]["jobId"].hex() for e in proto.market.events.JobClaimed().get_logs(
        from_block=since))
    out.posted = {"0x" + e["args"]["jobId"].hex() for e in proto.market.events.OfferPosted().get_logs(
        from_block=since)}
    return out


def _figures(cfg: Config, v: Observed) -> dict[str, str]:
    fig: dict[str, str] = {}
    start, stream_end, end = v.marks["start"], v.marks["stream_end"], v.marks["end"]
    health, memory = v.probed["health"], v.probed["memory"]
    fig["on-chain offers posted / mined / decided"] = (
        f"{len(v.chain_offers)} / {sum(o.job_id in v.posted for o in v.chain_offers)} / "
        f"{sum(v.states.get(o.job_id, 'seen') != 'seen' for o in v.chain_offers)} "
        f"(all decided {v.marks['chain_decided'] - start:.1f} s after the first send)")
    n = len(v.replies)
    fig["direct offers sent (distinct + resends)"] = f"{n} ({len(v.distinct)} + {n - len(v.distinct)})"
    fig["direct rate offered / achieved"] = f"{n / v.sent_s:.1f}/s / {n / v.done_s:.1f}/s (target {cfg.rate:g}/s)"
    fig["direct reply codes"] = ", ".join(f"{k}: {c}" for k, c in sorted(Counter(str(r[1]) for r in v.replies).items()))
    fig["direct reply latency p50 / p95 / p99 / max"] = latency_ms([r[4] for r in v.replies])
    ok = sum(h[2] == 200 for h in health)
    fig["/healthz answered (200)"] = f"{ok} / {len(health)} (one every {cfg.probe_interval * 1000:.0f} ms)"
    for name, lo, hi in (("idle", 0, start), ("during the stream", start, stream_end), ("after it", stream_end, end)):
        fig[f"/healthz p50 / p95 / p99 / max, {name}"] = latency_ms([h[1] for h in window(health, lo, hi)])
    mem = window(memory, start, end)
    if len(mem) > 2:
        for col, name in ((1, "node RSS, process"), (2, "node RSS, process + workers")):
            fig[f"{name}: start / mid / end"] = " / ".join(f"{m[col] / 1024:.1f}" for m in
                                                          (mem[0], mem[len(mem) // 2], mem[-1])) + " MiB"
        # Judged on the second half: the first holds the one-time steps (the on-chain burst's logs parsed at
        # once, the request backlog's high-water mark) that a long-running node pays once; a leak keeps going.
        late = mem[len(mem) // 2:]
        minutes = (late[-1][0] - late[0][0]) / 60
        for col, name in ((1, "process"), (2, "process + workers")):
            whole = slope_mib_per_min([(m[0] - start, m[col]) for m in mem])
            slope = slope_mib_per_min([(m[0] - start, m[col]) for m in late])
            flat = abs(slope * minutes) < max(FLAT_MIB, 0.03 * late[0][col] / 1024)
            fig[f"RSS trend ({name}), whole run / second half"] = (
                f"{whole:+.2f} / {slope:+.2f} MiB/min (second half {minutes * 60:.0f} s): "
                f"{'flat' if flat else '**growing**'}")
        busy = window(memory, start, stream_end)
        if len(busy) > 1:
            cpu = (busy[-1][3] - busy[0][3]) / (busy[-1][0] - busy[0][0])
            fig["node process CPU during the stream"] = f"{cpu * 100:.0f}% of one core ({os.cpu_count()} cores)"
    fig["acceptable jobs claimed / submitted (warm-up included)"] = (
        f"{sum(o.job_id in v.claims for o in v.accept)} / {sum(v.states.get(o.job_id) in DONE for o in v.accept)} "
        f"of {len(v.accept)}")
    return fig


def _checks(v: Observed) -> dict[str, tuple[bool, str]]:
    chk: dict[str, tuple[bool, str]] = {}
    health = v.probed["health"]
    bad = [h[2] for h in health if h[2] != 200]
    chk["every /healthz answered"] = (bool(health) and not bad, f"{len(bad)} of {len(health)} not 200 {bad[:3]}")
    chk["on-chain offers all mined"] = (not v.send_errors and all(o.job_id in v.posted for o in v.chain_offers),
                                        f"{len(v.send_errors)} send errors {v.send_errors[:2]}")
    wrong = Counter((o.kind, r, c) for o, r, c, _, _ in v.replies + v.replay_replies if (r, c) != EXPECT[o.kind])
    chk["every direct reply as expected, no 5xx"] = (not wrong, f"{sum(wrong.values())} unexpected "
                                                                f"{wrong.most_common(3)}")
    off = Counter(o.kind for o in v.chain_offers if v.states.get(o.job_id) not in (
        DONE if o.kind == "accept" else ("rejected",)))
    chk["every on-chain offer decided as expected"] = (not off, f"{sum(off.values())} not {dict(off)}")
    offers = len(v.chain_offers) + 1 + len(v.distinct) + len(v.races)  # + the warm-up job
    chk["one journal row per offer"] = (v.rows == offers == len(v.states), f"{v.rows} rows for {offers} offers")
    chk["no job entered a state twice"] = (not v.twice, f"{len(v.twice)} repeats {v.twice[:3]}")
    s0, s1, s2 = v.seen
    chk["offers_seen == distinct offers"] = (
        s0.get("chain") == len(v.chain_offers) + 1 and s0.get("direct") == len(v.distinct),
        f"chain {s0.get('chain', 0):.0f} of {len(v.chain_offers)} + 1 warm-up, direct {s0.get('direct', 0):.0f} of "
        f"{len(v.distinct)}")
    race_wrong = Counter((r, c) for o, r, c, _, _ in v.race_replies if (r, c) != EXPECT[o.kind])
    counted = s1.get("direct", 0) - s0.get("direct", 0)
    chk["concurrent duplicates counted once"] = (not race_wrong and counted == len(v.races),
                                                 f"{len(v.races)} offers x4 at once: counted {counted:.0f}, "
                                                 f"unexpected replies {dict(race_wrong)}")
    again = sum(s2.get(k, 0) - s1.get(k, 0) for k in ("chain", "direct"))
    chk["replayed offers counted nothing"] = (again == 0, f"{len(v.replay_replies)} resent, counted {again:.0f}")
    acceptable = {o.job_id for o in v.accept}
    extra = [j for j, n in v.claims.items() if n > 1 or j not in acceptable]
    chk["<= 1 JobClaimed per job, only acceptable ones"] = (not extra, f"{sum(v.claims.values())} claims, "
                                                                       f"{len(extra)} wrong")
    chk["acceptable jobs ran"] = (all(v.states.get(j) in DONE for j in acceptable), f"{len(acceptable)} jobs")
    return chk


def report(cfg: Config, seen: Observed) -> Result:
    return Result(cfg, _figures(cfg, seen), _checks(seen))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--onchain", type=int, default=1000, help="open offers posted on chain (default 1000)")
    ap.add_argument("--rate", type=float, default=200.0, help="direct offers per second (default 200)")
    ap.add_argument("--seconds", type=float, default=30.0, help="length of the direct stream (default 30)")
    ap.add_argument("--accept", type=int, default=5, help="acceptable offers per path (default 5)")
    ap.add_argument("--seed", type=int, default=8)
    ap.add_argument("--bench", type=Path, help="reuse this `gpunode bench --quick` file")
    ap.add_argument("--out", type=Path, help="write the table as markdown here")
    a = ap.parse_args(argv)
    if a.onchain < 1 or a.rate <= 0 or a.seconds <= 0 or a.accept < 1:
        ap.error("--onchain, --rate, --seconds and --accept must be positive")
    result = run(Config(onchain=a.onchain, rate=a.rate, seconds=a.seconds, accept=a.accept, seed=a.seed,
                        bench=a.bench))
    text = result.markdown()
    print(text)
    if a.out:
        a.out.write_text(text)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
