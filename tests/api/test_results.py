"""GET /results/{jobId}: only the job's requester, with a fresh signed request, gets the stored bytes."""

from __future__ import annotations

from aiohttp.test_utils import TestClient
from eth_account import Account
from eth_account.messages import encode_defunct

from node.api.auth import SIGNATURE_HEADER, TIMESTAMP_HEADER, result_request_message, sign_result_request
from node.jobs.state import JobState
from tests.api.conftest import Clock
from tests.api.fakes import CHAIN_ID, PROVIDER, REQUESTER, STRANGER, WINDOW_S, FakeNode, job_id

DATA = bytes(range(256)) * 40 + b"\x00tail"
N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def headers(clock: Clock, jid: str, *, key=REQUESTER, dt: int = 0, provider: str = PROVIDER,  # type: ignore[no-untyped-def]
            chain_id: int = CHAIN_ID) -> dict[str, str]:
    return sign_result_request(key, jid, provider, chain_id, int(clock.t) + dt)


async def error_of(resp, status: int, code: str) -> None:  # type: ignore[no-untyped-def]
    assert resp.status == status, await resp.text()
    body = await resp.json()
    assert body["error"] == code and body["detail"], body


async def test_requester_gets_the_exact_bytes_with_the_root(client: TestClient, node: FakeNode,
                                                             clock: Clock) -> None:
    jid = node.add_job(1, JobState.SUBMITTED, data=DATA)
    resp = await client.get(f"/results/{jid}", headers=headers(clock, jid, dt=-WINDOW_S))
    assert resp.status == 200, await resp.text()
    assert await resp.read() == DATA
    assert resp.headers["X-Result-Root"] == node.journal.get(jid).result_root
    assert resp.headers["Content-Length"] == str(len(DATA))
    assert resp.headers["Content-Type"] == "application/octet-stream"
    head = await client.head(f"/results/{jid}", headers=headers(clock, jid))
    assert head.status == 405


async def test_signature_works_once(client: TestClient, node: FakeNode, clock: Clock) -> None:
    jid = node.add_job(1, JobState.COMMITTED, data=DATA)
    h = headers(clock, jid)
    assert (await client.get(f"/results/{jid}", headers=h)).status == 200
    await error_of(await client.get(f"/results/{jid}", headers=h), 403, "replayed")
    # the same signature with v as 0/1 instead of 27/28 is the same signature, still a replay
    sig = bytearray(bytes.fromhex(h[SIGNATURE_HEADER][2:]))
    sig[64] -= 27
    h2 = {**h, SIGNATURE_HEADER: "0x" + sig.hex()}
    await error_of(await client.get(f"/results/{jid}", headers=h2), 403, "replayed")
    clock.t += 1  # a fresh signature (new time) downloads again
    assert (await client.get(f"/results/{jid}", headers=headers(clock, jid))).status == 200


async def test_other_signers_are_forbidden(client: TestClient, node: FakeNode, clock: Clock) -> None:
    jid = node.add_job(1, JobState.SUBMITTED, data=DATA)
    await error_of(await client.get(f"/results/{jid}", headers=headers(clock, jid, key=STRANGER)), 403,
                   "wrong_signer")
    # signed by the requester but for another provider or chain: recovers to someone else
    other = "0x" + "ef" * 20
    await error_of(await client.get(f"/results/{jid}", headers=headers(clock, jid, provider=other)), 403,
                   "wrong_signer")
    await error_of(await client.get(f"/results/{jid}", headers=headers(clock, jid, chain_id=1)), 403,
                   "wrong_signer")
    # signed for another job of the same requester
    other_job = node.add_job(2, JobState.SUBMITTED, data=DATA)
    await error_of(await client.get(f"/results/{jid}", headers=headers(clock, other_job)), 403, "wrong_signer")


async def test_time_window(client: TestClient, node: FakeNode, clock: Clock) -> None:
    jid = node.add_job(1, JobState.SUBMITTED, data=DATA)
    await error_of(await client.get(f"/results/{jid}", headers=headers(clock, jid, dt=-WINDOW_S - 1)), 401,
                   "stale_timestamp")
    await error_of(await client.get(f"/results/{jid}", headers=headers(clock, jid, dt=WINDOW_S + 1)), 401,
                   "stale_timestamp")
    assert (await client.get(f"/results/{jid}", headers=headers(clock, jid, dt=WINDOW_S))).status == 200


async def test_missing_or_malformed_headers_are_401(client: TestClient, node: FakeNode, clock: Clock) -> None:
    jid = node.add_job(1, JobState.SUBMITTED, data=DATA)
    good = headers(clock, jid)
    resp = await client.get(f"/results/{jid}")
    await error_of(resp, 401, "unauthenticated")
    assert resp.headers["WWW-Authenticate"]
    await error_of(await client.get(f"/results/{jid}", headers={TIMESTAMP_HEADER: good[TIMESTAMP_HEADER]}), 401,
                   "unauthenticated")
    await error_of(await client.get(f"/results/{jid}", headers={SIGNATURE_HEADER: good[SIGNATURE_HEADER]}), 401,
                   "unauthenticated")
    for ts in ("soon", "1.5", "-3", ""):
        h = {**good, TIMESTAMP_HEADER: ts}
        await error_of(await client.get(f"/results/{jid}", headers=h), 401,
                       "unauthenticated" if not ts else "bad_timestamp")
    sig = good[SIGNATURE_HEADER]
    for bad in ("0x1234", sig[:-2], sig + "00", "0x" + "zz" * 65):
        await error_of(await client.get(f"/results/{jid}", headers={**good, SIGNATURE_HEADER: bad}), 401,
                       "bad_signature")
    # the malleated twin (s -> N - s) recovers the same signer but is refused as non-canonical
    raw = bytes.fromhex(sig[2:])
    twin = raw[:32] + (N - int.from_bytes(raw[32:64], "big")).to_bytes(32, "big") + bytes([55 - raw[64]])
    msg = encode_defunct(text=result_request_message(jid, PROVIDER, CHAIN_ID, int(good[TIMESTAMP_HEADER])))
    assert Account.recover_message(msg, signature=twin) == REQUESTER.address
    await error_of(await client.get(f"/results/{jid}", headers={**good, SIGNATURE_HEADER: "0x" + twin.hex()}),
                   401, "bad_signature")
    # r = 0 has no signer at all
    zero = "0x" + "00" * 32 + "01" * 32 + "1b"
    await error_of(await client.get(f"/results/{jid}", headers={**good, SIGNATURE_HEADER: zero}), 401,
                   "bad_signature")


async def test_unknown_job_no_result_and_bad_id(client: TestClient, node: FakeNode, clock: Clock) -> None:
    unknown = job_id(404)
    await error_of(await client.get(f"/results/{unknown}", headers=headers(clock, unknown)), 404, "unknown_job")
    await error_of(await client.get("/results/0x12", headers=headers(clock, job_id(1))), 400, "bad_job_id")
    running = node.add_job(5, JobState.RUNNING)
    h = headers(clock, running)
    await error_of(await client.get(f"/results/{running}", headers=h), 404, "no_result")
    # polling before the result exists does not spend the signature
    path = node.results / "5.bin"
    path.write_bytes(DATA)
    node.journal.transition(running, JobState.COMMITTED, reason="done", result_root="0x" + "77" * 32,
                            result_path=path)
    resp = await client.get(f"/results/{running}", headers=h)
    assert resp.status == 200 and await resp.read() == DATA and resp.headers["X-Result-Root"] == "0x" + "77" * 32


async def test_result_file_gone_from_disk_is_404(client: TestClient, node: FakeNode, clock: Clock) -> None:
    jid = node.add_job(1, JobState.SUBMITTED, data=DATA)
    (node.results / "1.bin").unlink()
    await error_of(await client.get(f"/results/{jid}", headers=headers(clock, jid)), 404, "no_result")
