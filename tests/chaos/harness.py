"""A chaos run: a real daemon on anvil, a steady stream of jobs, seeded faults, then settlement and checks.

The shape of a run (``Chaos.run``):
1. anvil (1 s blocks) with the protocol deployed (120 s challenge window, 2.5 % fee), the loopback RPC
   proxy in front of it, and one provider node (``gpunode run`` subprocess, scripts.localnode) whose only
   RPC URL is the proxy.
2. The requester thread posts jobs; the faults of the profile run one after another at seeded random
   moments spread over the fault phase (kills aim at stages of the job lifecycle).
3. Drain: the requester stops; the node is left to claim and submit what it has.
4. Settle: chain time jumps past the challenge window (kills still aimed at the settlement), so every
   submitted job is finalized and withdrawn; failed claims get their deadline passed so they expire.
5. The node is stopped and ``checks.verify`` compares the chain with the journal.

Everything random comes from one ``random.Random(seed)``; the seed is printed so a failure can be replayed
with ``GPUNODE_CHAOS_SEED``. Wall-clock timing still varies between runs (the node is a real process), so
a replay aims the same faults at the same stages, not at the same microsecond.
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eth_account import Account
from web3 import Web3

from node.chain.deploy import ProtocolParams
from node.chain.devnet import Anvil
from node.chain.protocol import Protocol
from scripts.devnet import start_devnet
from scripts.localnode import LocalNode, provision
from tests.chaos import faults
from tests.chaos.faults import Fault
from tests.chaos.proxy import RpcProxy
from tests.chaos.requester import Requester

FEE_BPS = 250
WINDOW = 120
MAX_DURATION = 3600
IN_PROGRESS = {"seen", "validated", "claimed", "fetching", "running", "committed"}


@dataclass(frozen=True)
class Profile:
    name: str
    kills: int  # in the job phase; settle_kills more during settlement
    settle_kills: int
    outage_s: float
    reorgs: int
    spikes: int
    spike_s: float
    drops: int
    phase_s: float  # the faults are spread over this many seconds
    post_interval: float
    drain_s: float

    @property
    def total_kills(self) -> int:
        return self.kills + self.settle_kills


SHORT = Profile("short", kills=8, settle_kills=2, outage_s=8, reorgs=3, spikes=1, spike_s=5, drops=2, phase_s=95,
                post_interval=3.0, drain_s=90)
LONG = Profile("long", kills=44, settle_kills=6, outage_s=60, reorgs=12, spikes=3, spike_s=15, drops=6,
               phase_s=600, post_interval=2.5, drain_s=300)


def profile_from_env() -> Profile:
    return LONG if os.environ.get("GPUNODE_CHAOS", "").strip().lower() == "long" else SHORT


def seed_from_env() -> int:
    raw = os.environ.get("GPUNODE_CHAOS_SEED", "").strip()
    return int(raw) if raw else random.SystemRandom().randrange(2**32)


@dataclass
class Run:
    """What a run did, for the checks and the table."""

    profile: Profile
    seed: int
    faults: list[Fault] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)  # phase -> seconds it took
    advanced_s: int = 0  # chain seconds skipped
    start_block: int = 0  # the chain's head when the node first started: its own transactions come after


class Chaos:
    def __init__(self, profile: Profile, seed: int, root: Path, bench: Path, log: Any = print) -> None:
        self.profile, self.seed, self.root, self.bench, self.log = profile, seed, root, bench, log
        self.rng = random.Random(seed)
        self.run_record = Run(profile, seed)
        self.t0 = time.monotonic()
        self.anvil: Anvil | None = None
        self.proxy: RpcProxy | None = None
        self.node: LocalNode  # set by setup()
        self.requester: Requester
        self.proto: Protocol
        self.w3: Web3
        self.operator_key = ""
        self.keys: list[str] = []

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    # -- chain access ----------------------------------------------------------------------------------
    def rpc(self, method: str, params: list) -> Any:
        reply = self.w3.provider.make_request(method, params)  # type: ignore[arg-type]
        if "error" in reply:
            raise RuntimeError(f"{method}{params}: {reply['error']}")
        return reply.get("result")

    def node_txs_in(self, lo: int, hi: int) -> list[str]:
        """Hashes of the node's transactions in blocks lo..hi of the current chain."""
        me = self.node.address.lower()
        out = []
        for n in range(max(lo, 0), hi + 1):
            block = self.w3.eth.get_block(n, full_transactions=True)
            out += ["0x" + bytes(tx["hash"]).hex() for tx in block["transactions"] if tx["from"].lower() == me]
        return out

    def advance(self, seconds: int) -> None:
        self.rpc("evm_increaseTime", [seconds])
        self.rpc("evm_mine", [])
        self.run_record.advanced_s += seconds

    # -- set-up and tear-down --------------------------------------------------------------------------
    def setup(self) -> None:
        self.anvil = Anvil(block_time=1, log_path=self.root / "anvil.log").start()
        dep, self.keys = start_devnet(self.anvil, 8, 1_000_000, ProtocolParams(fee_bps=FEE_BPS,
                                      challenge_window_s=WINDOW), deployments_dir=self.root, log=lambda *_: None)
        self.w3 = Web3(Web3.HTTPProvider(self.anvil.url, request_kwargs={"timeout": 30}))
        self.proto = Protocol(self.w3, dep)
        self.proto.approve(self.keys[1], dep.market, 2**256 - 1)
        self.proxy = RpcProxy(self.anvil.port).start()
        self.operator_key = self.keys[3]
        payout = Account.create().address  # a fresh address: its token balance is exactly what the node paid it
        self.node = provision(self.proto, self.proxy.url, self.root / f"{dep.chain_id}.json", self.operator_key,
                              payout, self.root / "node", bench=self.bench)
        self.requester = Requester(self.proto, self.keys[1], lambda: self.node, random.Random(self.seed + 1),
                                   interval=self.profile.post_interval, small=(32, 257), big=4096, big_every=6,
                                   direct_every=4, bad_every=10, max_duration=MAX_DURATION)

    def node_log(self, lines: int = 80) -> str:
        node = getattr(self, "node", None)
        return node.tail(lines) if node is not None else "(no node)"

    def teardown(self) -> None:
        steps = [lambda: self.requester.stop() if hasattr(self, "requester") else None,
                 lambda: self.node.stop() if hasattr(self, "node") else None,
                 lambda: self.proxy and self.proxy.close(), lambda: self.anvil and self.anvil.stop()]
        for step in steps:
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - tear down everything, report what failed
                self.log(f"chaos teardown: {exc!r}")

    # -- the run ---------------------------------------------------------------------------------------
    def run(self) -> Run:
        p, rng, rec = self.profile, self.rng, self.run_record
        self.log(f"chaos {p.name}: seed {self.seed} (replay with GPUNODE_CHAOS_SEED={self.seed})")
        rec.start_block = self.w3.eth.block_number + 1  # provisioning (register, stake) is not the node's doing
        self.node.start()
        self.t0 = time.monotonic()
        self.requester.start()
        plan = (["kill"] * p.kills + ["reorg"] * p.reorgs + ["fee_spike"] * p.spikes + ["drop"] * p.drops
                + ["outage"])
        rng.shuffle(plan)
        slot = p.phase_s / len(plan)
        for i, kind in enumerate(plan):
            start = (i + rng.uniform(0.1, 0.9)) * slot
            time.sleep(max(0.0, start - self.elapsed()))
            fault = self._strike(kind)
            rec.faults.append(fault)
            self.log(f"  {fault.at:7.1f} s  {fault.kind:<9} {fault.detail}{'' if fault.aimed else ' (not aimed)'}")
        rec.phases["faults"] = self.elapsed()
        self.requester.stop()
        self.requester.wait_mined()
        for err in self.requester.errors[:5]:
            self.log(f"  requester: {err}")
        self._drain()
        self._settle()
        self.node.stop()
        rec.phases["total"] = self.elapsed()
        return rec

    def _strike(self, kind: str) -> Fault:
        if kind == "kill":
            return faults.kill(self, self.rng)
        if kind == "outage":
            return faults.outage(self, self.rng, self.profile.outage_s)
        if kind == "reorg":
            return faults.reorg(self, self.rng)
        if kind == "fee_spike":
            return faults.fee_spike(self, self.rng, self.profile.spike_s)
        return faults.drop(self, self.rng)

    def _drain(self) -> None:
        """Until every job the requester posted is past the node's work (or the drain time is up)."""
        t = time.monotonic()
        posted = set(self.requester.posted)
        deadline = t + self.profile.drain_s
        while time.monotonic() < deadline:
            jobs = self.node.jobs()
            if posted <= set(jobs) and not any(j["state"] in IN_PROGRESS for j in jobs.values()):
                break
            time.sleep(1.0)
        self.run_record.phases["drain"] = time.monotonic() - t

    def _settle(self) -> None:
        """Past the challenge window (kills aimed at finalize and withdraw meanwhile), then past the claims'
        deadline if some failed, until no job the node claimed is left open."""
        t = time.monotonic()
        self.advance(WINDOW + 1)
        for _ in range(self.profile.settle_kills):
            self.run_record.faults.append(faults.kill(self, self.rng, faults.SETTLE_STAGES))
        open_states = {"submitted", "finalized", "disputed"}
        self._wait_none_in(open_states, 150)
        if any(j["state"] in open_states | IN_PROGRESS | {"failed"} for j in self.node.jobs().values()):
            self.advance(MAX_DURATION + 1)  # failed claims, stragglers and late submits lapse or fall due
            self._wait_none_in(open_states | IN_PROGRESS | {"failed"}, 180)
        self.run_record.phases["settle"] = time.monotonic() - t

    def _wait_none_in(self, states: set[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not any(j["state"] in states for j in self.node.jobs().values()):
                return
            time.sleep(1.0)
        left = {k[:10]: j["state"] for k, j in self.node.jobs().items() if j["state"] in states}
        self.log(f"  settle: still open after {timeout:.0f} s: {left}")


__all__ = ["LONG", "SHORT", "Chaos", "Profile", "Run", "profile_from_env", "seed_from_env"]
