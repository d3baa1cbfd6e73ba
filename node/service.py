"""`gpunode run`: wires the layers into one daemon and owns its start-up and shutdown.

Start-up checks everything that would make the node sign or compute for the wrong thing (data directory
held by another node, wrong chain, missing deployments, no keystore) and refuses with one clear message.
Then the long-running loops start as supervised tasks: a loop that raises is logged, counted and
restarted; it never takes the node down.

Shutdown (SIGTERM or Ctrl-C): stop claiming, let running jobs finish and submit for up to
node.shutdown_grace_s, then cancel what is left. Every step is in the journal and the transaction store
before it is acted on, so whatever was cut short resumes on the next start. Exit status 0.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from web3 import Web3

from node import __version__
from node.api.server import start_api
from node.chain.contracts import load_abi
from node.chain.deployments import default_path, load_deployment
from node.chain.fees import GWEI, FeePolicy
from node.chain.follower import ChainEvent, EventFollower
from node.chain.rpc import RpcClient, RpcError
from node.chain.txmanager import TxManager
from node.chain.txstore import TxStore
from node.chain.verify import RpcOfferView
from node.compute.hardware import NvmlApi, detect_async
from node.compute.idle import IdleMonitor
from node.compute.pool import WorkerPool
from node.compute.workers import DeviceSpec
from node.config import Settings
from node.datadir import DataDir
from node.jobs.dispatcher import Dispatcher
from node.jobs.executor import Executor, Paths
from node.jobs.intake import Intake, OfferReply
from node.jobs.journal import Journal
from node.jobs.policy import Policy, device_profiles
from node.jobs.reveal import Revealer
from node.jobs.scheduler import Slots
from node.jobs.settler import Settler
from node.jobs.state import JobState
from node.jobs.watch import Watcher
from node.metrics import Metrics
from node.supervisor import Supervisor

log = logging.getLogger("gpunode.service")


class StartupError(RuntimeError):
    """The node cannot start; the message says why and what to do."""


class NodeService:
    def __init__(self, settings: Settings, signer: Any, *, nvml: Any = None,
                 idle_keys: dict[str, Any] | None = None) -> None:
        # nvml and idle_keys are seams for tests: a fake NVML, and which of its devices each worker device is.
        self.settings, self.signer, self.nvml, self.idle_keys = settings, signer, nvml, idle_keys
        self.provider = signer.address
        self.metrics = Metrics()
        self.supervisor = Supervisor(on_restart=lambda name: self.metrics.task_restarts.labels(name).inc())
        self.started_at = time.time()
        self.head_number: int | None = None
        self.head_time: int | None = None
        self.fee_bps = 0
        self.registered = False
        self.payout = ""
        self.pending: int | None = None  # the payout address's balance in the market, as last read
        self.chain_id = settings.chain.chain_id
        self.market = ""
        self.stopping = asyncio.Event()
        self.draining = False

    # ------------------------------------------------------------------------------------------ clock
    def chain_time(self) -> int:
        return self.head_time if self.head_time is not None else int(time.time())

    # ------------------------------------------------------------------------------------------ start
    async def start(self) -> None:
        s = self.settings
        self.dirs = DataDir(s.node.data_dir)
        self.dirs.lock()
        dep_path = s.chain.deployments or default_path(s.chain.chain_id)
        try:
            self.deployment = load_deployment(Path(dep_path), s.chain.chain_id)
        except Exception as exc:  # DeploymentError or OSError: both mean the same to the operator
            raise StartupError(f"cannot load the deployments file {dep_path}: {exc}") from None
        self.market = self.deployment.market
        self.rpc = RpcClient.from_settings(s.chain)
        await self.rpc.start()
        try:
            await self.rpc.ensure_chain(s.chain.chain_id, self.deployment.chain_id)
        except Exception as exc:
            raise StartupError(f"chain check failed: {exc}") from None
        head = await self.rpc.head()
        self.head_number, self.head_time = head.number, head.timestamp
        await self._read_provider()

        self.journal = Journal(self.dirs.path("journal.db"))
        self.txm = TxManager(self.rpc, TxStore(self.dirs.path("transactions.db")), self.signer, s.chain.chain_id,
                             FeePolicy(ceiling=int(s.chain.max_fee_gwei * GWEI),
                                       min_tip=int(s.chain.priority_fee_gwei * GWEI)),
                             confirmations=s.chain.confirmations, bump_after_blocks=s.chain.bump_after_blocks,
                             reorg_depth=s.chain.reorg_depth)

        attestation = await self._attestation()
        # torch is imported only to find GPUs that NVML cannot see, and only if the benchmark ran on one:
        # it costs the daemon's process seconds and hundreds of MB, and jobs run in workers anyway.
        cuda = any(str(d.get("device", "")).startswith("cuda") for d in attestation.get("devices", []))
        cap = await detect_async(self.nvml, use_torch=cuda)
        by_name = {f"cuda:{g.index}": g for g in cap.gpus}
        # The power limit, not the idle draw: it bounds what a job can cost in electricity.
        watts = {n: g.power_limit_w or g.power_draw_w for n, g in by_name.items() if g.power_limit_w or g.power_draw_w}
        self.profiles = device_profiles(attestation, cap, s, watts)
        specs = [DeviceSpec(name=p.name, index=None if p.name == "cpu" else int(p.name.split(":")[1]),
                            memory_fraction=s.hardware.gpu_memory_fraction,
                            cpu_memory_mib=s.hardware.cpu_worker_memory_mb) for p in self.profiles]
        self.pool = WorkerPool(specs, max_queue=s.hardware.queue_per_device, idle_stop=s.hardware.worker_idle_s)
        failed = await self.pool.start()
        for name, err in failed.items():
            log.error("worker for %s did not start: %s", name, err)
        self.slots = Slots([p.name for p in self.profiles])
        nvml = self.nvml if self.idle_keys else (self.nvml or NvmlApi()) if cap.source == "nvml" else None
        keys = {p.name: (by_name[p.name].uuid or by_name[p.name].index) if p.name in by_name else None
                for p in self.profiles}
        self.idle = IdleMonitor(nvml, self.idle_keys or keys,
                                threshold_pct=s.hardware.idle_utilization_pct, idle_seconds=s.hardware.idle_seconds,
                                own_pids=self._worker_pids, metrics=self.metrics)

        self.policy = Policy(s, self.provider, self.profiles)
        self.intake = Intake(self.journal, self.policy, self.metrics, chain_id=s.chain.chain_id, market=self.market,
                             view=RpcOfferView(self.rpc, self.market), chain_time=self.chain_time,
                             fee_bps=lambda: self.fee_bps, wake=lambda: self.dispatcher.wake())
        self.executor = Executor(self.journal, self.txm, self.rpc, self.pool, self.slots, self.metrics, s,
                                 market=self.market, provider=self.provider,
                                 paths=Paths(self.dirs.path("inputs"), self.dirs.path("results")),
                                 chain_time=self.chain_time, result_url=self._result_url,
                                 estimate_seconds=self._estimate_seconds)
        self.dispatcher = Dispatcher(self.journal, self.executor, self.intake, self.policy, self.slots, self.metrics,
                                     chain_time=self.chain_time, fee_bps=lambda: self.fee_bps,
                                     free_stake=self._free_stake, usable=self._usable,
                                     has_claim_intent=self._has_claim_intent)
        self.watcher = Watcher(self.journal, self.provider, self.metrics, self.payout)
        self.settler = Settler(self.journal, self.txm, self.rpc, self.market, self.payout or self.provider,
                               withdraw_threshold=_units(s), metrics=self.metrics)
        # Deployments without a verifier (older files) follow the market and registry only, as before.
        verifier = getattr(self.deployment, "verifier", None)
        self.revealer = Revealer(self.journal, self.txm, self.rpc, verifier, self.provider, self.metrics,
                                 chain_time=self.chain_time, recheck_s=max(30.0, s.chain.poll_interval_s)) \
            if verifier else None
        followed = {"market": self.market, "registry": self.deployment.registry}
        if verifier:
            followed["verifier"] = verifier
        start_block = s.chain.start_block if s.chain.start_block is not None else head.number
        self.follower = EventFollower(self.rpc, self.dirs.path("events.db"), followed, self._on_events,
                                      start_block=start_block, reorg_depth=s.chain.reorg_depth)
        self.api = await start_api(self, s.api.host, s.api.port) if s.api.enabled else None

        sup = self.supervisor
        sup.spawn("txmanager", self.txm.run)
        sup.spawn("heads", self._heads)
        sup.spawn("follower", self.follower.run)
        sup.spawn("monitor", self.idle.run)
        sup.spawn("dispatcher", lambda: self.dispatcher.run(s.chain.poll_interval_s))
        sup.spawn("settler", self._settle_loop)
        if self.revealer is not None:
            sup.spawn("reveals", self.revealer.run)
        log.info("gpunode %s running: provider %s, chain %d, market %s, devices %s, API %s", __version__,
                 self.provider, s.chain.chain_id, self.market, ", ".join(self.slots.devices),
                 f"http://{s.api.host}:{s.api.port}" if self.api else "off")

    async def _attestation(self) -> dict[str, Any]:
        """The benchmark this node registered with; measured now (quick) if the data dir has none, in a
        subprocess, since torch runs only outside the node's event loop process."""
        path = self.dirs.path("bench.json")
        if not path.is_file():
            log.info("no benchmark at %s: running a quick one (gpunode bench)", path)
            proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "node.cli", "bench", "--quick",
                                                        "--out", str(path), stdout=asyncio.subprocess.DEVNULL)
            if await proc.wait() != 0 or not path.is_file():
                raise StartupError("the benchmark failed; run `gpunode bench` to see why")
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise StartupError(f"cannot read the benchmark {path}: {exc}; run `gpunode bench` again") from None

    async def _view(self, contract: str, function: str, *args: Any) -> Any:
        """One read-only call of a protocol contract, through the RPC client's failover."""
        address = self.market if contract == "JobMarket" else self.deployment.registry

        def read(w3):
            return getattr(w3.eth.contract(address=address, abi=load_abi(contract)).functions, function)(*args).call()

        return await self.rpc.call(read, f"{contract}.{function}")

    async def _read_provider(self) -> None:
        _stake, _locked, active, payout, *_ = await self._view("ProviderRegistry", "getProvider", self.provider)
        self.fee_bps = int(await self._view("JobMarket", "feeBps"))
        was = (self.registered, self.payout)
        self.registered, self.payout = bool(active), payout
        if (self.registered, self.payout) == was:
            return  # read again on every block while unregistered: say it once
        if hasattr(self, "settler") and self.payout:
            self.settler.payout = Web3.to_checksum_address(self.payout)
            self.watcher.payout = str(self.payout).lower()
        if not self.registered:
            log.error("provider %s is not registered on this market: run `gpunode register`; no claims until then",
                      self.provider)
        elif self.settings.payout.address and self.settings.payout.address.lower() != str(self.payout).lower():
            log.warning("payout.address %s differs from the registered payout %s; the chain's is used",
                        self.settings.payout.address, self.payout)

    async def _free_stake(self) -> int | None:
        return int(await self._view("ProviderRegistry", "freeStake", self.provider))

    async def _has_claim_intent(self, job_id: str) -> bool:
        return await asyncio.to_thread(self.txm.store.get, f"claim:{job_id}") is not None

    def _usable(self, device: str) -> bool:
        if not self.registered or not self.dispatcher.accepting:
            return False
        return self.idle.idle(device) if self.settings.hardware.idle_only else True

    def _worker_pids(self) -> set[int]:
        return {w.pid for w in self.pool.workers.values() if w.pid}

    def _result_url(self, job_id: str) -> str:
        base = self.settings.api.public_url or f"http://{self.settings.api.host}:{self.settings.api.port}"
        return f"{base.rstrip('/')}/results/{job_id}"

    def _estimate_seconds(self, rec) -> float:
        quote = self.intake.decision(rec).quote
        return quote.seconds if quote is not None else self.settings.pricing.assumed_job_seconds

    # ------------------------------------------------------------------------------------------ loops
    async def _heads(self) -> None:
        """Follows the chain head. An RPC outage does not end the loop: it keeps asking at the chain's pace,
        so the node sees the first head once the RPC is back. (A failed task would be restarted only after
        the supervisor's backoff, which grows to a minute during a long outage: the chaos run measured the
        node blind for 32 s after a 60 s outage ended.)"""
        last, down = None, False
        while True:
            try:
                head = await self.rpc.head()
                self.head_number, self.head_time = head.number, head.timestamp
                self.metrics.head.set(head.number)
                if down:
                    log.info("chain head readable again: block %d", head.number)
                    down = False
                if head.number != last:
                    last = head.number
                    self.dispatcher.wake()
                    if not self.registered:
                        await self._read_provider()
            except RpcError as exc:
                if not down:
                    log.warning("chain head unreadable, retrying every poll: %s", exc)
                down = True
            await self.rpc.wait_new_head()

    async def _settle_loop(self) -> None:
        while True:
            await self.settler.settle_once(self.chain_time())
            if self.payout:
                try:
                    self.pending = int(await self._view("JobMarket", "balanceOf", self.payout))
                except RpcError:
                    pass  # an RPC outage (settle_once logged it): keep the last figure, read again next pass
            await asyncio.sleep(self.settings.chain.poll_interval_s)

    async def _on_events(self, events: list[ChainEvent]) -> None:
        for ev in events:
            if ev.name == "OfferPosted":
                await self.intake.on_event(ev)
            elif ev.contract == "verifier":
                if self.revealer is not None:
                    await self.revealer.on_event(ev)
            else:
                await asyncio.to_thread(self.watcher.apply, ev)

    # ------------------------------------------------------------------------------------------ stop
    async def stop(self) -> None:
        self.draining = True
        log.info("stopping: no new claims; running jobs get up to %.0f s", self.settings.node.shutdown_grace_s)
        left = await self.dispatcher.drain(self.settings.node.shutdown_grace_s)
        if left:
            log.warning("%d job(s) still running at the end of the grace period; they resume on the next start", left)
        await self.supervisor.stop()
        if self.api is not None:
            await self.api.cleanup()
        await self.pool.stop()
        await self.executor.close()
        await self.rpc.close()
        self.journal.close()
        self.txm.store.close()
        self.dirs.unlock()
        log.info("stopped")

    # ------------------------------------------------------------------------------------------ NodeApi
    async def readiness(self) -> dict[str, tuple[bool, str]]:
        checks: dict[str, tuple[bool, str]] = {}
        try:
            async with asyncio.timeout(5):
                head = await self.rpc.head()
            checks["rpc"] = (True, f"head {head.number}")
        except Exception as exc:  # noqa: BLE001 - any failure means not ready
            checks["rpc"] = (False, str(exc)[:200])
        checks["chain"] = (True, f"chain id {self.chain_id}")
        checks["keystore"] = (self.signer is not None, self.provider)
        pids, parked = self._worker_pids(), sum(w.parked for w in self.pool.workers.values())
        up = f"{len(pids)}/{len(self.pool.workers)} up" + (f", {parked} parked (idle)" if parked else "")
        checks["workers"] = (len(pids) + parked == len(self.pool.workers), up)  # parked: the next job starts it
        checks["registered"] = (self.registered, "active on the registry" if self.registered
                                else "not registered: run gpunode register")
        checks["accepting"] = (not self.draining, "draining" if self.draining else "claiming")
        return checks

    def status(self) -> dict[str, Any]:
        by_state = self.journal.by_state()
        idle = self.idle.snapshot()
        devices = []
        for name in self.slots.devices:
            snap = idle.get(name, {})
            devices.append({"name": name, "busy_job": self.slots.holder(name), "idle": bool(snap.get("idle", True)),
                            "utilization_pct": snap.get("utilization_pct"),
                            "foreign_pids": snap.get("foreign_pids", []), "reason": snap.get("reason", "")})
        overdue = [j.job_id for j in self.journal.overdue(self.chain_time())]
        fee = self.fee_bps

        def net(state: JobState) -> int:
            return sum(r.payment - r.payment * fee // 10_000 for r in self.journal.jobs(limit=100_000, state=state))

        withdrawn = net(JobState.PAID)
        earned = withdrawn + net(JobState.FINALIZED)
        return {
            "node": {"name": self.settings.node.name, "version": __version__, "provider": self.provider,
                     "payout": self.payout, "chain_id": self.chain_id, "market": self.market,
                     "started_at": self.started_at, "uptime_s": round(time.time() - self.started_at, 1),
                     "accepting": self.registered and not self.draining, "draining": self.draining},
            "chain": {"head": self.head_number, "endpoints": self.rpc.status()["endpoints"]},
            "devices": devices,
            "jobs": {"by_state": by_state, "open": sum(n for s, n in by_state.items() if JobState(s) not in
                                                       (JobState.PAID, JobState.REJECTED, JobState.EXPIRED,
                                                        JobState.SLASHED)), "overdue": overdue},
            # From the journal, net of the market's fee (today's fee: a fee change since a job was posted
            # makes this approximate); pending is the payout address's balance in the market, read on chain.
            "earnings": {"token_decimals": self.settings.pricing.token_decimals, "finalized_units": str(earned),
                         "withdrawn_units": str(withdrawn),
                         "pending_units": None if self.pending is None else str(self.pending)},
            "tasks": self.supervisor.status(),
        }

    async def submit_offer(self, body: bytes) -> OfferReply:
        if self.draining or not self.registered:
            why = "the node is shutting down" if self.draining else "this provider is not registered"
            return OfferReply(False, None, None, "not_accepting", why)
        return await self.intake.direct(body)

    def result_file(self, job_id: str) -> Path | None:
        rec = self.journal.get(job_id)
        if rec is None or not rec.result_path:
            return None
        path = Path(rec.result_path)
        return path if path.is_file() else None


def _units(s: Settings) -> int:
    from node.config import to_base_units

    return to_base_units(s.payout.withdraw_threshold, s.pricing.token_decimals)


async def serve(settings: Settings, signer: Any, *, nvml: Any = None) -> int:
    node = NodeService(settings, signer, nvml=nvml)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await node.start()
    except BaseException:
        if hasattr(node, "dirs"):
            node.dirs.unlock()
        raise
    await stop.wait()
    await node.stop()
    return 0


def run_node(settings: Settings, *, debug: bool = False) -> int:
    """The `gpunode run` entry: unlock the key, run until SIGTERM/Ctrl-C, exit 0 after a clean drain."""
    from node.chain.keys import KeystoreError, load_signer, resolve_password

    if settings.wallet.keystore is None:
        raise StartupError("wallet.keystore is not set: create one with `gpunode init` or `gpunode keys new`")
    try:
        signer = load_signer(settings.wallet.keystore, resolve_password(settings, confirm=False))
    except KeystoreError as exc:
        raise StartupError(str(exc)) from None
    os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    return asyncio.run(serve(settings, signer))
