"""The API routes over a real aiohttp server, with a fake node backed by a real journal and metrics."""

from __future__ import annotations

import json
import logging

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from node.api.server import MAX_OFFER_BYTES, start_api
from node.jobs.state import JobState
from tests.api.fakes import REQUESTER, FakeNode, job_id


async def error_of(resp, status: int) -> dict:  # type: ignore[no-untyped-def]
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert set(body) == {"error", "detail"} and body["detail"]
    return body


async def test_healthz(client: TestClient) -> None:
    resp = await client.get("/healthz")
    assert resp.status == 200 and await resp.json() == {"ok": True}


async def test_readyz_reports_every_check(client: TestClient, node: FakeNode) -> None:
    resp = await client.get("/readyz")
    assert resp.status == 200
    assert await resp.json() == {"ready": True, "checks": {"chain": {"ok": True, "detail": "head 12"},
                                                           "devices": {"ok": True, "detail": "cpu"}}}
    node.checks["chain"] = (False, "no RPC endpoint answers")
    resp = await client.get("/readyz")
    assert resp.status == 503
    body = await resp.json()
    assert body["ready"] is False and body["checks"]["chain"] == {"ok": False, "detail": "no RPC endpoint answers"}


async def test_readyz_503_when_the_check_itself_fails(client: TestClient, node: FakeNode) -> None:
    node.readiness_error = RuntimeError("boom")
    resp = await client.get("/readyz")
    assert resp.status == 503
    assert (await resp.json())["ready"] is False


async def test_metrics_has_every_series_and_jobs_gauge_follows_the_journal(client: TestClient,
                                                                            node: FakeNode) -> None:
    node.add_job(1, JobState.VALIDATED)
    node.add_job(2, JobState.VALIDATED)
    node.add_job(3, JobState.SUBMITTED)
    node.metrics.offers_seen.labels("direct").inc()
    node.metrics.device_utilization.labels("cuda:0").set(37)
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain; version=")
    text = await resp.text()
    for name in ("gpunode_offers_seen", "gpunode_offers_rejected", "gpunode_jobs", "gpunode_job_duration_seconds",
                 "gpunode_stage_duration_seconds", "gpunode_gas_spent_wei", "gpunode_earnings_token_units",
                 "gpunode_tx_attempts", "gpunode_device_utilization_pct"):
        assert f"# TYPE {name}" in text, name
    lines = set(text.splitlines())
    assert 'gpunode_jobs{state="validated"} 2.0' in lines
    assert 'gpunode_jobs{state="submitted"} 1.0' in lines
    assert 'gpunode_jobs{state="seen"} 0.0' in lines
    assert 'gpunode_device_utilization_pct{device="cuda:0"} 37.0' in lines
    node.journal.transition(job_id(1), JobState.CLAIMED, reason="claimed", deadline=1_900_000_000)
    lines = set((await (await client.get("/metrics")).text()).splitlines())
    assert 'gpunode_jobs{state="validated"} 1.0' in lines and 'gpunode_jobs{state="claimed"} 1.0' in lines


async def test_status_passes_the_node_document_through(client: TestClient, node: FakeNode) -> None:
    node.status_doc = {"node": {"name": "n1", "uptime_s": 12.5}, "devices": [{"name": "cpu", "idle": True}]}
    resp = await client.get("/status")
    assert resp.status == 200 and await resp.json() == node.status_doc


async def test_unexpected_error_is_json_500_and_logged(client: TestClient, node: FakeNode,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    node.status_error = RuntimeError("secret internals")
    with caplog.at_level(logging.ERROR, logger="node.api.server"):
        resp = await client.get("/status")
    body = await error_of(resp, 500)
    assert body["error"] == "internal" and "secret" not in json.dumps(body)
    assert any(r.exc_info and "secret internals" in str(r.exc_info[1]) for r in caplog.records)


async def test_jobs_listing_newest_first_with_filter_and_limit(client: TestClient, node: FakeNode) -> None:
    a = node.add_job(1, JobState.VALIDATED)
    b = node.add_job(2, JobState.REJECTED)
    c = node.add_job(3, JobState.SUBMITTED, data=b"r")
    jobs = (await (await client.get("/jobs")).json())["jobs"]
    assert [j["job_id"] for j in jobs] == [c, b, a]
    top = jobs[0]
    assert set(top) == {"job_id", "state", "requester", "provider", "workload", "payment", "bond", "deadline",
                        "expiry", "source", "device", "result_root", "reason", "code", "created", "updated"}
    assert top["state"] == "submitted" and top["payment"] == str(5 * 10**18 + 3) and top["bond"] == str(10**17)
    assert top["requester"] == REQUESTER.address.lower() and top["device"] == "cpu"
    assert top["deadline"] == 1_900_000_000 and top["result_root"] == "0x" + f"{3 + 0xabc:064x}"
    assert jobs[1]["code"] == "below_price_floor" and jobs[1]["result_root"] is None
    only = (await (await client.get("/jobs", params={"state": "validated"})).json())["jobs"]
    assert [j["job_id"] for j in only] == [a]
    one = (await (await client.get("/jobs", params={"limit": "1"})).json())["jobs"]
    assert [j["job_id"] for j in one] == [c]


@pytest.mark.parametrize("query", [{"state": "bogus"}, {"limit": "0"}, {"limit": "abc"}, {"limit": "100000"},
                                   {"limit": "²"}, {"limit": "-1"}])
async def test_jobs_bad_filter_is_400(client: TestClient, query: dict[str, str]) -> None:
    body = await error_of(await client.get("/jobs", params=query), 400)
    assert body["error"] in ("bad_state", "bad_limit")


async def test_job_detail_with_history(client: TestClient, node: FakeNode) -> None:
    jid = node.add_job(7, JobState.CLAIMED)
    resp = await client.get(f"/jobs/{jid.upper().replace('0X', '0x')}")
    assert resp.status == 200
    body = await resp.json()
    assert body["job"]["job_id"] == jid and body["job"]["state"] == "claimed"
    assert [(h["from"], h["to"]) for h in body["history"]] == [(None, "seen"), ("seen", "validated"),
                                                               ("validated", "claimed")]
    assert body["history"][-1]["reason"] == "test: claimed"


async def test_job_detail_unknown_and_bad_id(client: TestClient) -> None:
    assert (await error_of(await client.get(f"/jobs/{job_id(99)}"), 404))["error"] == "unknown_job"
    assert (await error_of(await client.get("/jobs/0x1234"), 400))["error"] == "bad_job_id"
    assert (await error_of(await client.get("/jobs/" + "0x" + "g" * 64), 400))["error"] == "bad_job_id"


async def test_unknown_route_and_wrong_method_are_json(client: TestClient) -> None:
    assert (await error_of(await client.get("/nope"), 404))["error"] == "not_found"
    resp = await client.post("/healthz", data=b"x")
    assert (await error_of(resp, 405))["error"] == "method_not_allowed"
    assert "GET" in resp.headers["Allow"]
    resp = await client.get("/offers")
    assert (await error_of(resp, 405))["error"] == "method_not_allowed" and resp.headers["Allow"] == "POST"


async def test_offer_accepted_is_202(client: TestClient, node: FakeNode) -> None:
    raw = b'{"n": 5, "workload": "matmul_int8"}  \n'
    resp = await client.post("/offers", data=raw, headers={"Content-Type": "application/json"})
    assert resp.status == 202
    assert await resp.json() == {"accepted": True, "job_id": job_id(5), "state": "validated"}
    assert node.bodies == [raw]  # the route passes the bytes through untouched
    assert node.journal.get(job_id(5)).state is JobState.VALIDATED


async def test_offer_refused_and_malformed_are_422(client: TestClient, node: FakeNode) -> None:
    resp = await client.post("/offers", data=b'{"n": 6, "workload": "llm"}')
    assert resp.status == 422
    assert await resp.json() == {"accepted": False, "job_id": job_id(6), "code": "workload_disabled",
                                 "reason": "workload llm is disabled"}
    resp = await client.post("/offers", data=b"not json")
    assert resp.status == 422
    body = await resp.json()
    assert body["accepted"] is False and body["code"] == "malformed" and body["job_id"] is None


async def test_offer_size_limit(client: TestClient, node: FakeNode) -> None:
    at_limit = b" " * MAX_OFFER_BYTES  # exactly the limit reaches the service (and is malformed there)
    assert (await client.post("/offers", data=at_limit)).status == 422
    assert node.bodies == [at_limit]
    body = await error_of(await client.post("/offers", data=b" " * (MAX_OFFER_BYTES + 1)), 413)
    assert body["error"] == "too_large"

    async def chunks():  # type: ignore[no-untyped-def]
        for _ in range(10):
            yield b" " * 8192

    body = await error_of(await client.post("/offers", data=chunks()), 413)  # chunked: no Content-Length
    assert body["error"] == "too_large"
    assert len(node.bodies) == 1


async def test_start_api_serves_on_a_free_port_and_reports_bind_failure(node: FakeNode) -> None:
    from aiohttp import ClientSession

    runner = await start_api(node, "127.0.0.1", 0)
    try:
        host, port = runner.addresses[0][:2]
        async with ClientSession() as http, http.get(f"http://{host}:{port}/healthz") as resp:
            assert resp.status == 200 and await resp.json() == {"ok": True}
        with pytest.raises(OSError):
            await start_api(node, "127.0.0.1", port)
    finally:
        await runner.cleanup()
    assert isinstance(runner, web.AppRunner)
