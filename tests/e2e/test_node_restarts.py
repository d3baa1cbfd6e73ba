"""The daemon interrupted in every stage of a job (kill -9, and SIGTERM without grace) resumes each job on
the next start with exactly one claim and one submit on chain."""

from __future__ import annotations

import hashlib
import signal
import sqlite3
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.e2e.nodenet import DONE, WINDOW, matmul, post, start_net

net = pytest.fixture(scope="module")(start_net)


class _SlowInput(BaseHTTPRequestHandler):
    body = b"x" * 1024
    delay = 4.0

    def do_GET(self):  # noqa: N802 - http.server's name
        time.sleep(self.delay)
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


@pytest.fixture
def slow_input():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SlowInput)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/input.bin"
    server.shutdown()


def test_interrupted_in_every_stage_each_job_resumes_without_a_second_transaction(net, tmp_path, slow_input):
    """kill -9 while the claim is in flight, while fetching, while committing and once submitted; SIGTERM
    (no grace) while running. Each time the next start finishes the job, and the chain shows exactly one
    claim and one submit for it."""
    node = net.node(tmp_path, 3, node={"shutdown_grace_s": 0.0}).start()
    jobs = []
    try:
        for stage in ("validated", "fetching", "running", "committed", "submitted"):
            kw = {}
            if stage == "fetching":  # matmul ignores an input, but the node still fetches and checks it first
                kw = {"input_uri": slow_input, "input_hash": hashlib.sha256(_SlowInput.body).digest()}
            job = post(net, matmul(1280 if stage == "running" else 64, len(jobs)), **kw)
            jobs.append(job)
            node.wait(lambda j=job, s=stage: node.jobs().get(j, {}).get("state") == s, 120, f"job in {stage}",
                      poll=0.05)
            if stage == "running":
                assert node.stop(signal.SIGTERM) == 0, node.tail()
                db = sqlite3.connect(node.data_dir / "journal.db")
                (state,) = db.execute("SELECT state FROM job_jobs WHERE job_id = ?", (job,)).fetchone()
                db.close()
                assert state == "running"  # cut short and persisted, not written off
            else:
                node.kill()
            node.start()
            node.wait_states([job], DONE, timeout=240)
        net.advance(WINDOW + 1)
        node.wait_states(jobs, {"paid"}, timeout=180)
        for job in jobs:
            assert len(net.events("JobClaimed", job)) == 1, job
            assert len(net.events("ResultSubmitted", job)) == 1, job
    finally:
        node.stop()


