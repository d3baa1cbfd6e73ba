"""`gpunode run` answers a reveal demand on its own: a real daemon runs a matmul-int8 job with canonical params
to submission, a challenger demands the chunk of one element through MatmulInt8Verifier, and the node reveals
it before the deadline without being asked; the challenge closes without fraud, the challenger's bond reaches
the node's payout address and the job goes on to payment."""

from __future__ import annotations

import pytest
from eth_account import Account

from node.chain.contracts import load_abi
from node.chain.deploy import send
from node.chain.fraud import EMPTY_INPUTS, VERIFIER, MatmulParams, audit_commitment, demand_calldata
from scripts.localnode import job_id, offer
from tests.e2e.nodenet import WINDOW, start_net

net = pytest.fixture(scope="module")(start_net)


def test_node_reveals_the_demanded_chunk_by_itself(net, tmp_path):
    p = MatmulParams(40, 32, 60, seed=3, audit=audit_commitment(b"\x05" * 32))
    o, sig = offer(net.proto, net.keys[1], p.canonical(), nonce=net.next_nonce())
    net.proto.post(net.keys[1], o, p.canonical(), sig)
    job = job_id(net.proto, o)
    node = net.node(tmp_path, 3).start()
    try:
        node.wait_states([job], {"submitted"}, timeout=240)
        w3 = net.proto.w3
        verifier = w3.eth.contract(address=net.proto.deployment.verifier, abi=load_abi(VERIFIER))
        challenger = Account.from_key(net.keys[4])
        bond = verifier.functions.challengeBond().call()
        net.proto.approve(net.keys[4], verifier.address, bond)
        before = net.proto.balance(node.payout)
        send(w3, challenger, {"to": verifier.address, "gasPrice": w3.eth.gas_price,
                              "data": demand_calldata(o, p, 37, 59, EMPTY_INPUTS)})

        def revealed():
            events = verifier.events.ChunkRevealed().get_logs(from_block=0)
            return [e for e in events if "0x" + e["args"]["jobId"].hex() == job]

        (event,) = node.wait(revealed, 120, "the node's reveal")
        assert event["args"]["fraud"] is False
        assert event["args"]["chunkIndex"] == (4 * (37 * 60 + 59)) // 4096
        assert net.proto.balance(node.payout) == before + bond
        node.wait(lambda: node.job(job)["job"]["state"] == "submitted", 60, "the challenge to close")
        codes = [h["code"] for h in node.job(job)["history"]]
        assert {"reveal_demanded", "reveal_sent", "chunk_revealed"} <= set(codes), codes
        _, metrics, _ = node.request("/metrics")
        assert 'gpunode_reveals_total{outcome="sent"} 1.0' in metrics.decode()

        net.advance(WINDOW + 1)  # the original window still applies; the job is paid as usual
        node.wait_states([job], {"paid"}, timeout=120)
    finally:
        assert node.stop() == 0, node.tail()
