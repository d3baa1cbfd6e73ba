"""node.chain.fraud: canonical params byte for byte, the result layout, audit positions, the supplied-input
commitment and proofs, all checked in Python against the torch product, and against the deployed
MatmulInt8Verifier on the conftest anvil (encodeParams, auditPosition, expectedElement, a real challenge)."""

from __future__ import annotations

import json

import pytest
import torch
from eth_utils import keccak
from web3.logs import DISCARD

from node.chain import fraud
from node.chain.fraud import EMPTY_INPUTS, FraudProofError, MatmulParams
from node.compute.commitment import CHUNK_SIZE, commit_bytes, leaf_hash, verify_inclusion
from node.compute.workloads import get
from node.compute.workloads.matmul_int8 import input_root
from tests.chain import fraudkit as kit

SECRET = bytes(range(32))
ROOT = keccak(b"root")
AB = bytes.fromhex("ab" * 32)
UINT64_MAX = 2**64 - 1


def supplied(m: int = 5, k: int = 7, n: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(-128, 128, (m, k), generator=g, dtype=torch.int8),
            torch.randint(-128, 128, (k, n), generator=g, dtype=torch.int8))


def raw(t: torch.Tensor) -> bytes:
    return t.contiguous().numpy().tobytes()


# -- params ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("p", "text"), [
    (MatmulParams(2, 3, 4, seed=5), '{"m":2,"k":3,"n":4,"seed":5}'),
    (MatmulParams(1, 1, 1, seed=UINT64_MAX), '{"m":1,"k":1,"n":1,"seed":18446744073709551615}'),
    (MatmulParams(2, 3, 4, seed=0, audit=AB), '{"m":2,"k":3,"n":4,"seed":0,"audit":"0x' + "ab" * 32 + '"}'),
    (MatmulParams(2, 3, 4, ab_root=AB),
     '{"m":2,"k":3,"n":4,"input":"safetensors","ab_root":"0x' + "ab" * 32 + '"}'),
    (MatmulParams(2, 3, 4, ab_root=AB, audit=ROOT),
     '{"m":2,"k":3,"n":4,"input":"safetensors","ab_root":"0x' + "ab" * 32 + '","audit":"0x' + ROOT.hex() + '"}'),
])
def test_canonical_bytes_and_round_trip(p: MatmulParams, text: str) -> None:
    assert p.canonical() == text.encode()
    assert p.params_hash == keccak(text.encode())
    assert MatmulParams.from_params(text.encode()) == p
    assert json.loads(text) == json.loads(p.canonical())  # plain JSON, which the workload accepts too
    get(fraud.WORKLOAD).validate_params(p.canonical())


def test_as_abi() -> None:
    assert MatmulParams(2, 3, 4, seed=5).as_abi() == (2, 3, 4, False, 5, b"\0" * 32, b"\0" * 32)
    assert MatmulParams(2, 3, 4, ab_root=AB, audit=ROOT).as_abi() == (2, 3, 4, True, 0, AB, ROOT)


@pytest.mark.parametrize(("params", "message"), [
    (b'{"m":2,"k":3,"n":4, "seed":5}', "canonical"),
    (b'{"k":3,"m":2,"n":4,"seed":5}', "canonical"),
    (b'{"m":2,"k":3,"n":4,"seed":5,"audit":"0x' + b"AB" * 32 + b'"}', "lower-case"),
    (b'{"m":2,"k":3,"n":4,"seed":5.0}', "seed must be an integer"),
    (b'{"m":2,"k":3,"n":4,"seed":true}', "seed must be an integer"),
    (b'{"m":2,"k":3,"n":4,"seed":-1}', "seed must be an integer"),
    (b'{"m":2,"k":3,"n":4}', "lack key"),
    (b'{"m":2,"k":3,"n":4,"seed":5,"x":1}', "does not know: x"),
    (b'{"m":2,"k":3,"n":4,"input":"safetensors"}', "without ab_root"),
    (b'{"m":2,"k":3,"n":4,"input":"npz","ab_root":"0x' + b"ab" * 32 + b'"}', "safetensors"),
    (b'{"m":2,"k":3,"n":4,"seed":5,"ab_root":"0x' + b"ab" * 32 + b'"}', "does not know: ab_root"),
    (b'{"m":2,"k":3,"n":4,"seed":5,"audit":"0x' + b"00" * 32 + b'"}', "must not be zero"),
    (b'{"m":0,"k":3,"n":4,"seed":5}', "m must be"),
    (b'{"m":65536,"k":65536,"n":1,"seed":5}', "exceeds"),
    (b'[1]', "JSON object"),
    (b'\xff', "UTF-8"),
    (b" " * 5000, "longer than"),
])
def test_non_canonical_or_invalid_params_refused(params: bytes, message: str) -> None:
    with pytest.raises(FraudProofError, match=message):
        MatmulParams.from_params(params)


def test_params_need_exactly_one_input_source() -> None:
    with pytest.raises(FraudProofError, match="exactly one"):
        MatmulParams(1, 1, 1)
    with pytest.raises(FraudProofError, match="exactly one"):
        MatmulParams(1, 1, 1, seed=1, ab_root=AB)
    with pytest.raises(FraudProofError, match="32 bytes"):
        MatmulParams(1, 1, 1, ab_root=b"\1" * 31)


# -- the result layout ------------------------------------------------------------------------------------


def test_result_layout() -> None:
    p = MatmulParams(3, 2, 1000, seed=1)  # 12,000 bytes: chunks of 4096, 4096, 3808
    assert (p.result_size, p.chunk_count) == (12_000, 3)
    assert p.element_chunk(0, 0) == (0, 0)
    assert p.element_chunk(1, 23) == divmod(4 * 1023, CHUNK_SIZE) == (0, 4092)
    assert p.element_chunk(1, 24) == (1, 0)
    assert p.element_chunk(2, 999) == (2, 12_000 - 4 - 2 * CHUNK_SIZE)
    assert [p.chunk_length(i) for i in range(3)] == [4096, 4096, 12_000 - 8192]
    for bad in ((3, 0), (0, 1000), (-1, 0)):
        with pytest.raises(FraudProofError, match="outside"):
            p.element_chunk(*bad)


def test_result_chunk_proves_the_committed_element(tmp_path) -> None:
    p = MatmulParams(40, 16, 50, seed=9)  # 8,000 bytes, two chunks
    c = kit.product(p)
    data = kit.result_bytes(c)
    path = tmp_path / "c.out"
    path.write_bytes(data)
    commitment = commit_bytes(data)
    for i, j in ((0, 0), (20, 24), (39, 49), (25, 10)):
        index, offset = p.element_chunk(i, j)
        chunk, proof = fraud.result_chunk(path, p, i, j)
        assert len(chunk) == p.chunk_length(index)
        assert fraud.committed_element(chunk, offset) == int(c[i, j]) == fraud.expected_element(p, i, j)
        assert verify_inclusion(leaf_hash(chunk), index, p.chunk_count, proof, commitment.root)
    path.write_bytes(data + b"\0")
    with pytest.raises(FraudProofError, match="8001 bytes; the params imply 8000"):
        fraud.result_chunk(path, p, 0, 0)
    with pytest.raises(FraudProofError, match="outside a chunk"):
        fraud.committed_element(b"\0" * 8, 5)


# -- audits ---------------------------------------------------------------------------------------------


def test_audit_commitment_and_position() -> None:
    assert fraud.audit_commitment(SECRET) == keccak(SECRET)  # abi.encode(bytes32) is the word itself
    p = MatmulParams(7, 3, 11, seed=1, audit=fraud.audit_commitment(SECRET))
    h = int.from_bytes(keccak(SECRET + ROOT), "big") % 77
    assert fraud.audit_position(p, SECRET, ROOT) == (h // 11, h % 11)
    seen = {fraud.audit_position(p, fraud.new_audit_secret(), ROOT) for _ in range(200)}
    assert all(0 <= i < 7 and 0 <= j < 11 for i, j in seen) and len(seen) > 40  # spread over the matrix
    assert fraud.new_audit_secret() != fraud.new_audit_secret()
    with pytest.raises(FraudProofError, match="32 bytes"):
        fraud.audit_commitment(b"short")


# -- supplied inputs --------------------------------------------------------------------------------------


def test_ab_root_and_supplied_proofs() -> None:
    m, k, n = 5, 7, 3
    a, b = supplied(m, k, n)
    root = fraud.ab_root(raw(a), raw(b), m, k, n)
    assert root == input_root(raw(a), raw(b), m, k, n)
    assert root == commit_leaves([raw(a[r]) for r in range(m)] + [raw(b[:, c]) for c in range(n)])
    p = MatmulParams(m, k, n, ab_root=root)
    c = kit.product(p, a, b)
    for i in range(m):
        for j in range(n):
            inputs = fraud.supplied_inputs(raw(a), raw(b), p, i, j)
            row, row_proof, col, col_proof = inputs
            assert row == raw(a[i]) and col == raw(b[:, j])
            assert verify_inclusion(leaf_hash(row), i, m + n, row_proof, root)
            assert verify_inclusion(leaf_hash(col), m + j, m + n, col_proof, root)
            assert fraud.expected_element(p, i, j, inputs) == int(c[i, j])
    other = bytearray(raw(b))
    other[0] ^= 1
    with pytest.raises(FraudProofError, match="do not match the job's ab_root"):
        fraud.supplied_inputs(raw(a), bytes(other), p, 0, 0)
    with pytest.raises(FraudProofError, match="int8 bytes"):
        fraud.ab_root(raw(a)[:-1], raw(b), m, k, n)
    assert fraud.supplied_inputs(b"", b"", MatmulParams(m, k, n, seed=1), 0, 0) == EMPTY_INPUTS


def commit_leaves(leaves: list[bytes]) -> bytes:
    from node.compute.commitment import merkle_root_of_leaves

    return merkle_root_of_leaves([leaf_hash(x) for x in leaves])


def test_seed_expected_element_matches_torch() -> None:
    p = MatmulParams(9, 70, 13, seed=UINT64_MAX - 3)
    c = kit.product(p)
    for i, j in ((0, 0), (8, 12), (4, 7)):
        assert fraud.expected_element(p, i, j) == int(c[i, j])


# -- against the deployed verifier ---------------------------------------------------------------------------


PARAMS = [
    MatmulParams(1, 1, 1, seed=0),
    MatmulParams(3, 5, 7, seed=UINT64_MAX),
    MatmulParams(65536, 4096, 1, seed=12345678901234567890, audit=keccak(b"a")),
    MatmulParams(4, 2, 3, ab_root=AB),
    MatmulParams(16384, 16384, 16384, ab_root=keccak(b"r"), audit=keccak(b"s")),
]


@pytest.mark.parametrize("p", PARAMS)
def test_contract_encodes_the_same_params(chain, p: MatmulParams) -> None:
    v = kit.verifier(chain)
    assert v.functions.encodeParams(p.as_abi()).call() == p.canonical()


def test_contract_picks_the_same_audit_position(chain) -> None:
    v = kit.verifier(chain)
    for p in (MatmulParams(7, 3, 11, seed=1, audit=keccak(SECRET)), MatmulParams(65536, 1, 4096, seed=2)):
        for root in (ROOT, keccak(b"other")):
            assert tuple(v.functions.auditPosition(p.as_abi(), SECRET, root).call()) == \
                fraud.audit_position(p, SECRET, root)


def test_contract_recomputes_the_torch_element(chain) -> None:
    v = kit.verifier(chain)
    m, k, n = 6, 33, 5
    a, b = supplied(m, k, n, seed=3)
    p = MatmulParams(m, k, n, ab_root=fraud.ab_root(raw(a), raw(b), m, k, n))
    c = kit.product(p, a, b)
    for i, j in ((0, 0), (5, 4), (2, 3)):
        inputs = fraud.supplied_inputs(raw(a), raw(b), p, i, j)
        assert v.functions.expectedElement(p.as_abi(), i, j, inputs).call() == int(c[i, j])
    seeded = MatmulParams(4, 300, 9, seed=77)
    cs = kit.product(seeded)
    for i, j in ((0, 0), (3, 8), (1, 5)):
        assert v.functions.expectedElement(seeded.as_abi(), i, j, EMPTY_INPUTS).call() == int(cs[i, j])


@pytest.mark.parametrize("cheat", [False, True])
def test_challenge_calldata_slashes_a_wrong_element_and_clears_a_right_one(chain, tmp_path, cheat: bool) -> None:
    operator, requester, challenger = chain.keys[2], chain.keys[1], chain.keys[3]
    payout = kit.provider(chain, operator)
    p = MatmulParams(20, 24, 60, seed=4, audit=fraud.audit_commitment(SECRET))
    job = kit.post(chain, p, requester, operator)
    job.claim()
    i, j = 17, 42
    c = kit.product(p)
    job.submit(kit.result_bytes(c, flip=(i, j) if cheat else None), tmp_path / "c.out")
    chunk, proof = fraud.result_chunk(tmp_path / "c.out", p, i, j)
    v = kit.verifier(chain)
    bond = v.functions.challengeBond().call()
    chain.proto.approve(challenger, v.address, bond)
    before = chain.proto.balance(payout)
    receipt = kit.send_raw(chain, challenger, v.address,
                           fraud.challenge_calldata(job.offer, p, i, j, EMPTY_INPUTS, chunk, proof))
    (event,) = v.events.Challenged().process_receipt(receipt, errors=DISCARD)
    assert event["args"]["fraud"] is cheat
    assert event["args"]["expected"] == int(c[i, j])
    assert event["args"]["committed"] == int(c[i, j]) + (1 if cheat else 0)
    state = chain.proto.job(job.raw_id)["state"]
    assert state == (9 if cheat else 3)  # Slashed, or back to Submitted
    assert chain.proto.balance(payout) == before + (0 if cheat else bond)
