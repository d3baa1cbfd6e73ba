"""The node's HTTP API: health and readiness probes, Prometheus metrics, status for the CLI, the job journal,
direct offers from requesters, and result downloads for a job's requester.

The API is a thin layer over the ``NodeApi`` protocol (implemented by node.service): routes translate HTTP
to calls and answers to JSON, and hold no node logic. In particular ``POST /offers`` hands the raw body to
``submit_offer`` unparsed, so the service owns every rule about what an offer is and the route only maps its
``OfferReply`` to 202 or 422. Every error, ours or aiohttp's (unknown route, wrong method, body too large),
leaves as JSON ``{"error": code, "detail": text}``; an unexpected exception is logged with its traceback and
answered 500 without one, since tracebacks help nobody on the wire and may show internals.

Journal reads are synchronous SQLite (with fsync on writes elsewhere), so routes run them in a thread to
keep the event loop, which also drives the chain follower and the scheduler, responsive.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CONTENT_TYPE_LATEST

from node.api.auth import AuthError, ReplayCache, check_signer, parse_request, recover_signer
from node.config import Settings
from node.jobs.intake import OfferReply
from node.jobs.journal import JobRecord, Journal, Transition
from node.jobs.state import JobState
from node.metrics import Metrics

logger = logging.getLogger(__name__)

MAX_OFFER_BYTES = 64 * 1024  # a signed offer is well under 2 KiB; anything near this is not one
MAX_JOBS_LIMIT = 1000
_JOB_ID = re.compile(r"0x[0-9a-fA-F]{64}")
_LIMIT = re.compile(r"[0-9]{1,5}")
_STATES = frozenset(s.value for s in JobState)


class NodeApi(Protocol):
    """What the API needs from the running node (node.service implements it).

    ``status()`` is called on the event loop (it should only read in-memory state and short journal
    reads); ``result_file()`` is called from a worker thread.
    """

    journal: Journal
    metrics: Metrics
    settings: Settings
    provider: str
    chain_id: int
    market: str

    async def readiness(self) -> dict[str, tuple[bool, str]]: ...

    def status(self) -> dict: ...

    async def submit_offer(self, body: bytes) -> OfferReply: ...

    def result_file(self, job_id: str) -> Path | None: ...


class ApiError(Exception):
    """An expected refusal: answered as JSON with this status, never logged as an error."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        self.status, self.code, self.detail = status, code, detail
        super().__init__(detail)


def _error(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": code, "detail": detail}, status=status, headers=headers)


_HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "too_large"}


@web.middleware
async def errors_as_json(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                         ) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return _error(exc.status, exc.code, exc.detail)
    except AuthError as exc:
        extra = {"WWW-Authenticate": "Gpunode-Signature"} if exc.status == 401 else None
        return _error(exc.status, exc.code, exc.detail, extra)
    except web.HTTPException as exc:  # aiohttp's own: unknown route, wrong method, body too large
        if exc.status < 400:
            raise
        keep = {k: v for k, v in exc.headers.items() if k.lower() not in ("content-type", "content-length")}
        code = _HTTP_CODES.get(exc.status, exc.reason.lower().replace(" ", "_"))
        detail = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
        if exc.status == 404:
            detail = f"no such endpoint: {request.method} {request.path}"
        elif exc.status == 405:
            detail = f"{request.method} is not allowed on {request.path} (allowed: {keep.get('Allow', '?')})"
        return _error(exc.status, code, detail, keep)
    except Exception:
        logger.exception("API %s %s failed", request.method, request.path)
        return _error(500, "internal", "internal error; the node's log has the details")


def job_dict(record: JobRecord) -> dict[str, Any]:
    """A journal record as the API and the CLI show it (token amounts as strings: they exceed 2**53)."""
    return {"job_id": record.job_id, "state": record.state.value, "requester": record.requester,
            "provider": record.provider, "workload": record.workload, "payment": str(record.payment),
            "bond": str(record.bond), "deadline": record.deadline, "expiry": record.expiry,
            "source": record.source.value, "device": record.device, "result_root": record.result_root,
            "reason": record.reason, "code": record.code, "created": record.created, "updated": record.updated}


def transition_dict(t: Transition) -> dict[str, Any]:
    return {"from": None if t.from_state is None else t.from_state.value, "to": t.to_state.value, "at": t.at,
            "reason": t.reason, "code": t.code}


def _job_id(request: web.Request) -> str:
    raw = request.match_info["jobId"]
    if not _JOB_ID.fullmatch(raw):
        raise ApiError(400, "bad_job_id", "a job id is 0x followed by 64 hex digits")
    return raw.lower()


class _Routes:
    def __init__(self, node: NodeApi, clock: Callable[[], float]) -> None:
        self.node = node
        self.clock = clock
        self.replays = ReplayCache(node.settings.api.signature_window_s, clock)

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def readyz(self, request: web.Request) -> web.Response:
        try:
            raw = await self.node.readiness()
            checks = {str(name): {"ok": bool(ok), "detail": str(detail)} for name, (ok, detail) in raw.items()}
        except Exception as exc:  # a probe that cannot answer means "not ready", not "server error"
            logger.exception("readiness check failed")
            checks = {"readiness": {"ok": False, "detail": f"readiness check failed: {type(exc).__name__}"}}
        ready = all(c["ok"] for c in checks.values())
        return web.json_response({"ready": ready, "checks": checks}, status=200 if ready else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        by_state = await asyncio.to_thread(self.node.journal.by_state)
        self.node.metrics.refresh_jobs(by_state)
        return web.Response(body=self.node.metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def status(self, request: web.Request) -> web.Response:
        return web.json_response(self.node.status())

    async def jobs(self, request: web.Request) -> web.Response:
        state = request.query.get("state") or None
        if state is not None and state not in _STATES:
            raise ApiError(400, "bad_state", f"unknown state {state!r}; one of: {', '.join(JobState)}")
        raw_limit = request.query.get("limit", "100")
        if not _LIMIT.fullmatch(raw_limit) or not 1 <= int(raw_limit) <= MAX_JOBS_LIMIT:
            raise ApiError(400, "bad_limit", f"limit must be a whole number from 1 to {MAX_JOBS_LIMIT}")
        records = await asyncio.to_thread(self.node.journal.jobs, int(raw_limit), state)
        return web.json_response({"jobs": [job_dict(r) for r in records]})

    async def job(self, request: web.Request) -> web.Response:
        job_id = _job_id(request)
        record = await asyncio.to_thread(self.node.journal.get, job_id)
        if record is None:
            raise ApiError(404, "unknown_job", f"job {job_id} is not in this node's journal")
        history = await asyncio.to_thread(self.node.journal.history, job_id)
        return web.json_response({"job": job_dict(record), "history": [transition_dict(t) for t in history]})

    async def offers(self, request: web.Request) -> web.Response:
        if request.content_length is not None and request.content_length > MAX_OFFER_BYTES:
            raise ApiError(413, "too_large", f"an offer may be at most {MAX_OFFER_BYTES} bytes")
        try:
            body = await request.read()  # client_max_size stops a chunked body past the limit
        except web.RequestPayloadError:  # a broken chunked body, or one not in its declared Content-Encoding
            raise ApiError(400, "bad_body", "the request body cannot be read: broken chunked encoding, or "
                                            "not in its declared Content-Encoding") from None
        except ConnectionResetError:  # the client hung up before sending the whole body: nobody to answer
            logger.debug("POST /offers: the client disconnected before the body was complete")
            raise ApiError(400, "incomplete_body", "the connection closed before the whole body arrived") from None
        reply = await self.node.submit_offer(body)
        if reply.accepted:
            return web.json_response({"accepted": True, "job_id": reply.job_id, "state": reply.state}, status=202)
        return web.json_response({"accepted": False, "job_id": reply.job_id, "code": reply.code,
                                  "reason": reply.reason}, status=422)

    async def result(self, request: web.Request) -> web.StreamResponse:
        """The result file, for the job's requester only (see node.api.auth for the signed headers).

        Order of checks: id format (400), headers and time window (401), job known (404), signer is the
        requester (403), result stored (404 "no_result": not computed yet, or no longer kept), signature
        not used before (403 "replayed"). A signature is spent only by a download that is served, so a
        requester polling before the result exists is not refused as a replay.
        """
        job_id = _job_id(request)
        window = self.node.settings.api.signature_window_s
        signed = parse_request(request.headers, now=self.clock(), window_s=window)
        record = await asyncio.to_thread(self.node.journal.get, job_id)
        if record is None:
            raise ApiError(404, "unknown_job", f"job {job_id} is not in this node's journal")
        check_signer(recover_signer(signed, job_id, self.node.provider, self.node.chain_id), record.requester)
        path = await asyncio.to_thread(self._stored_result, job_id)
        if path is None or record.result_root is None:
            raise ApiError(404, "no_result", f"job {job_id} has no stored result (state {record.state.value})")
        if not self.replays.use(signed):
            raise AuthError(403, "replayed", "this signature was already used; sign the request again")
        return web.FileResponse(path, headers={"X-Result-Root": record.result_root,
                                               "Content-Type": "application/octet-stream"})

    def _stored_result(self, job_id: str) -> Path | None:
        path = self.node.result_file(job_id)
        return path if path is not None and Path(path).is_file() else None


def create_app(node: NodeApi, *, clock: Callable[[], float] = time.time) -> web.Application:
    """The API application for ``node``; ``clock`` (unix seconds) checks signed-request timestamps."""
    routes = _Routes(node, clock)
    app = web.Application(middlewares=[errors_as_json], client_max_size=MAX_OFFER_BYTES)
    app.router.add_get("/healthz", routes.healthz)
    app.router.add_get("/readyz", routes.readyz)
    app.router.add_get("/metrics", routes.metrics)
    app.router.add_get("/status", routes.status)
    app.router.add_get("/jobs", routes.jobs)
    app.router.add_get("/jobs/{jobId}", routes.job)
    app.router.add_post("/offers", routes.offers)
    app.router.add_get("/results/{jobId}", routes.result, allow_head=False)  # a HEAD must not spend a signature
    return app


class _ClientFaultLog(logging.LoggerAdapter):
    """aiohttp's server logs each request it cannot parse (a bad request line, header, chunk or Content-Encoding,
    answered 400: the client's fault) as an ERROR with a traceback, and again when it drains such a body
    after the answer, so anyone who can reach the port could fill the operator's log. Those go to DEBUG;
    everything else (a 500 included) is logged as aiohttp does."""

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kwargs: Any) -> None:
        if _client_fault(exc_info):
            self.debug(msg, *args, exc_info=exc_info, **kwargs)
            return
        super().exception(msg, *args, exc_info=exc_info, **kwargs)


def _client_fault(exc: Any) -> bool:
    """An HTTP parse error with a 4xx status, or an error caused by one (aiohttp wraps body errors)."""
    while isinstance(exc, BaseException):
        if isinstance(exc, HttpProcessingError) and 400 <= exc.code < 500:
            return True
        exc = exc.__cause__
    return False


async def start_api(node: NodeApi, host: str, port: int) -> web.AppRunner:
    """Serves the API on host:port (port 0 picks a free one: ``runner.addresses[0][1]``).

    The caller owns the runner and calls ``runner.cleanup()`` on shutdown. A bind failure (port in use)
    raises OSError after releasing everything.
    """
    runner = web.AppRunner(create_app(node), access_log=None,  # monitors poll: an access line each is noise
                           logger=_ClientFaultLog(logging.getLogger("aiohttp.server"), {}))
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    logger.info("API listening on %s", ", ".join(f"{a[0]}:{a[1]}" for a in runner.addresses))
    return runner


__all__ = ["MAX_OFFER_BYTES", "ApiError", "NodeApi", "OfferReply", "create_app", "job_dict", "start_api",
           "transition_dict"]
