"""/readyz's worker check: a worker parked for idleness (hardware.worker_idle_s) is ready, since the next job
starts it; a worker that is neither up nor parked (failed to start, died) is not. On a stand-in service."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from node.chain.rpc import Head
from node.service import NodeService


class Rpc:
    async def head(self) -> Head:
        return Head(7, b"\x01" * 32, b"\x02" * 32, 1_000)


def _service(*workers: SimpleNamespace) -> SimpleNamespace:
    pool = SimpleNamespace(workers={f"w{i}": w for i, w in enumerate(workers)})
    svc = SimpleNamespace(rpc=Rpc(), chain_id=31337, signer=object(), provider="0xabc", registered=True,
                          draining=False, pool=pool)
    svc._worker_pids = lambda: NodeService._worker_pids(svc)
    return svc


@pytest.mark.parametrize(("workers", "ready", "says"), [
    ([SimpleNamespace(pid=11, parked=False)], True, "1/1 up"),
    ([SimpleNamespace(pid=None, parked=True)], True, "0/1 up, 1 parked (idle)"),
    ([SimpleNamespace(pid=11, parked=False), SimpleNamespace(pid=None, parked=True)], True, "1/2 up, 1 parked"),
    ([SimpleNamespace(pid=None, parked=False)], False, "0/1 up"),  # failed to start or died: not ready
])
async def test_a_parked_worker_is_ready_a_dead_one_is_not(workers, ready, says):
    checks = await NodeService.readiness(_service(*workers))
    assert checks["workers"][0] is ready and checks["workers"][1].startswith(says)
    assert all(ok for name, (ok, _) in checks.items() if name != "workers")
