"""RFC 6962 result commitments: the published reference tree, every proof of many tree sizes, files vs
bytes, and proofs made here checked by the Solidity library on a real anvil."""

from __future__ import annotations

import hashlib
import os
import random

import pytest
from eth_account import Account

from node.chain.deploy import deploy_contract
from node.compute import commitment as cm
from node.compute.commitment import (
    CHUNK_SIZE,
    Commitment,
    commit_bytes,
    commit_file,
    file_inclusion_proof,
    inclusion_proof,
    leaf_hash,
    merkle_root_of_leaves,
    node_hash,
    verify_inclusion,
)

# The RFC 6962 reference tree from Google's certificate-transparency project, as kept in
# github.com/transparency-dev/merkle, proof/verify_test.go (`leaves`, `roots`, `inclusionProofs`; that
# file numbers leaves from 1, indices here start at 0). ROOTS[n] is the root of the first n leaves.
LEAVES = [bytes.fromhex(h) for h in (
    "", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f")]
ROOTS = [bytes.fromhex(h) for h in (
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
)]
INCLUSION = [  # (index, tree size, audit path)
    (0, 1, []),
    (0, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (5, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (1, 5, ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
]
SOME_HASH = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")
REF_HASHES = [leaf_hash(x) for x in LEAVES]


# RFC 6962 §2.1 written as literally as possible, to check the iterative code against.
def _k(n: int) -> int:
    return 1 << ((n - 1).bit_length() - 1)


def ref_mth(d: list[bytes]) -> bytes:
    if not d:
        return hashlib.sha256(b"").digest()
    if len(d) == 1:
        return d[0]
    k = _k(len(d))
    return node_hash(ref_mth(d[:k]), ref_mth(d[k:]))


def ref_path(m: int, d: list[bytes]) -> list[bytes]:
    if len(d) == 1:
        return []
    k = _k(len(d))
    return ref_path(m, d[:k]) + [ref_mth(d[k:])] if m < k else ref_path(m - k, d[k:]) + [ref_mth(d[:k])]


def hashes(n: int, salt: int = 0) -> list[bytes]:
    return [leaf_hash(f"{salt}:{i}".encode()) for i in range(n)]


def flip(b: bytes, bit: int = 3) -> bytes:
    return bytes([b[0] ^ (1 << bit)]) + b[1:]


def shape(index: int, size: int) -> list[bool]:
    """Whether each sibling on the path is to the left; all a verifier derives from (index, size)."""
    return [lo < index for lo, _ in cm._path_ranges(index, size)]


# ---- the reference tree ----

def test_leaf_and_node_hashes_follow_the_rfc():
    assert leaf_hash(b"") == hashlib.sha256(b"\x00").digest() == ROOTS[1]
    assert node_hash(b"a" * 32, b"b" * 32) == hashlib.sha256(b"\x01" + b"a" * 32 + b"b" * 32).digest()
    assert leaf_hash(bytearray(b"xy")) == leaf_hash(memoryview(b"xy")) == leaf_hash(b"xy")


@pytest.mark.parametrize("n", range(9))
def test_roots_match_the_reference_tree(n):
    assert merkle_root_of_leaves(REF_HASHES[:n]) == ROOTS[n]
    assert merkle_root_of_leaves(tuple(REF_HASHES[:n])) == ROOTS[n]


@pytest.mark.parametrize(("index", "size", "path"), INCLUSION)
def test_reference_inclusion_proofs(index, size, path):
    path = [bytes.fromhex(h) for h in path]
    assert inclusion_proof(REF_HASHES[:size], index) == path
    leaf, root = REF_HASHES[index], ROOTS[size]
    assert verify_inclusion(leaf, index, size, path, root)
    # transparency-dev's corruptInclusionProof, case by case
    bad = [
        (leaf, index - 1, size, path, root), (leaf, index + 1, size, path, root),
        (leaf, index ^ 2, size, path, root), (leaf, index, size * 2, path, root),
        (leaf, index, size // 2, path, root), (leaf_hash(b"WrongLeaf"), index, size, path, root),
        (leaf, index, size, path, ROOTS[0]), (leaf, index, size, path, SOME_HASH),
        (leaf, index, size, [*path, b""], root), (leaf, index, size, [*path, root], root),
        (leaf, index, size, [b"", *path], root), (leaf, index, size, [root, *path], root),
    ]
    bad += [(leaf, index, size, path[:i] + [flip(p)] + path[i + 1:], root) for i, p in enumerate(path)]
    if path:
        bad.append((leaf, index, size, path[:-1], root))
    if len(path) > 1:
        bad.append((leaf, index, size, [path[0], SOME_HASH, *path[1:]], root))
    for args in bad:
        if args[1] >= 0:
            assert not verify_inclusion(*args), args


# ---- every proof of every small tree ----

@pytest.mark.parametrize("n", range(1, 34))
def test_every_index_proves_and_tampering_fails(n):
    d = hashes(n, salt=n)
    root = merkle_root_of_leaves(d)
    assert root == ref_mth(d)
    for i in range(n):
        proof = inclusion_proof(d, i)
        assert proof == ref_path(i, d)
        assert verify_inclusion(d[i], i, n, proof, root)
        assert not verify_inclusion(leaf_hash(b"other"), i, n, proof, root), "tampered leaf"
        assert not verify_inclusion(d[i], i, n, proof, flip(root)), "tampered root"
        assert not verify_inclusion(d[i], i, n, [*proof, SOME_HASH], root), "proof too long"
        for j in range(len(proof)):
            assert not verify_inclusion(d[i], i, n, proof[:j] + [flip(proof[j])] + proof[j + 1:], root)
        if proof:
            assert not verify_inclusion(d[i], i, n, proof[:-1], root), "proof too short"
        for j in range(n + 1):
            if j != i:
                assert not verify_inclusion(d[i], j, n, proof, root), f"index {j} instead of {i}"
        # The proof authenticates the path's shape, not the size itself: another size passes exactly
        # when it gives this leaf the same shape (so the size must be committed beside the root).
        for s in range(1, 2 * n + 2):
            assert verify_inclusion(d[i], i, s, proof, root) == (i < s and shape(i, s) == shape(i, n)), s
        assert not verify_inclusion(d[i], i, 2 * n, proof, root)


def test_roots_across_batch_boundaries():
    d = hashes(2 * cm._BATCH + 3)
    for n in (cm._BATCH - 1, cm._BATCH, cm._BATCH + 1, 2 * cm._BATCH + 3):
        assert merkle_root_of_leaves(d[:n]) == ref_mth(d[:n])
    assert inclusion_proof(d, 5000) == ref_path(5000, d)


def test_bad_arguments():
    with pytest.raises(ValueError, match="outside a tree of 3 leaves"):
        inclusion_proof(hashes(3), 3)
    with pytest.raises(ValueError, match="outside"):
        inclusion_proof(hashes(3), -1)
    with pytest.raises(ValueError, match="outside a tree of 0 leaves"):
        inclusion_proof([], 0)
    with pytest.raises(ValueError, match="non-negative"):
        verify_inclusion(ROOTS[1], -1, 1, [], ROOTS[1])
    with pytest.raises(ValueError, match="non-negative"):
        verify_inclusion(ROOTS[1], 0, -1, [], ROOTS[1])
    assert verify_inclusion(ROOTS[1], 0, 1, [], ROOTS[1])
    assert not verify_inclusion(ROOTS[1], 0, 0, [], ROOTS[1]), "nothing is in the empty tree"
    assert not verify_inclusion(ROOTS[1], 0, 0, [], ROOTS[0])
    assert not verify_inclusion(ROOTS[1], 1, 1, [], ROOTS[1]), "index == size"
    assert not verify_inclusion(ROOTS[1][:31], 0, 1, [], ROOTS[1][:31]), "short hashes"
    assert not verify_inclusion(REF_HASHES[0], 0, 2, [REF_HASHES[1][:31]], ROOTS[2]), "short proof element"
    assert not verify_inclusion(SOME_HASH, 0, 2**256 - 1, [SOME_HASH] * 1000, SOME_HASH)


# ---- files ----

@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 4097, 3 * 4096 + 5, 1 << 20 | 123])
def test_commit_file_equals_commit_bytes(tmp_path, size):
    data = random.Random(size).randbytes(size)
    path = tmp_path / "out.bin"
    path.write_bytes(data)
    chunks = [data[i:i + CHUNK_SIZE] for i in range(0, size, CHUNK_SIZE)]
    want = Commitment(ref_mth([leaf_hash(c) for c in chunks]), size, len(chunks))
    assert commit_bytes(data) == want
    assert commit_file(path) == want
    assert commit_file(str(path)) == want
    assert commit_bytes(bytearray(data)) == want


def test_empty_result_commits_to_the_empty_tree():
    assert commit_bytes(b"") == Commitment(hashlib.sha256(b"").digest(), 0, 0)


@pytest.mark.parametrize("read_chunks", [1, 3, 5, 8])
def test_reads_of_any_chunk_count_give_the_same_root(tmp_path, monkeypatch, read_chunks):
    data = os.urandom(37 * CHUNK_SIZE + 11)
    path = tmp_path / "out.bin"
    path.write_bytes(data)
    want = commit_bytes(data)
    monkeypatch.setattr(cm, "READ_SIZE", read_chunks * CHUNK_SIZE)
    seen = []
    assert commit_file(path, progress=lambda done, total: seen.append((done, total))) == want
    assert seen[-1] == (len(data), len(data))
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert commit_bytes(data) == want


@pytest.mark.parametrize("read_chunks", [1024, 3, 4])
def test_file_inclusion_proof_every_chunk(tmp_path, monkeypatch, read_chunks):
    monkeypatch.setattr(cm, "READ_SIZE", read_chunks * CHUNK_SIZE)
    data = os.urandom(21 * CHUNK_SIZE + 100)
    path = tmp_path / "out.bin"
    path.write_bytes(data)
    com = commit_file(path)
    leaves = [leaf_hash(data[i:i + CHUNK_SIZE]) for i in range(0, len(data), CHUNK_SIZE)]
    for i in range(com.chunks):
        chunk, proof, got = file_inclusion_proof(path, i)
        assert got == com
        assert chunk == data[i * CHUNK_SIZE:(i + 1) * CHUNK_SIZE]
        assert proof == inclusion_proof(leaves, i)
        assert verify_inclusion(leaf_hash(chunk), i, com.chunks, proof, com.root)


def test_file_inclusion_proof_bad_index(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"x" * 5000)
    with pytest.raises(ValueError, match="outside a tree of 2 leaves"):
        file_inclusion_proof(path, 2)
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="outside a tree of 0 leaves"):
        file_inclusion_proof(path, 0)
    with pytest.raises(FileNotFoundError):
        commit_file(tmp_path / "missing")


# ---- the same proofs, checked by contracts/src/lib/MerkleRfc6962.sol on anvil ----

@pytest.fixture
def harness(chain):
    contract, _ = deploy_contract(chain.w3, Account.from_key(chain.keys[0]), "MerkleRfc6962Harness")
    return contract.functions


def test_contract_hashes_agree(harness):
    chunk = os.urandom(CHUNK_SIZE)
    assert harness.leafHash(chunk).call() == leaf_hash(chunk)
    assert harness.leafHash(chunk[:100]).call() == leaf_hash(chunk[:100])
    assert harness.leafHash(b"").call() == ROOTS[1]
    assert harness.nodeHash(ROOTS[1], ROOTS[2]).call() == node_hash(ROOTS[1], ROOTS[2])


def test_contract_accepts_python_proofs_of_a_file(harness, tmp_path):
    data = os.urandom(19 * CHUNK_SIZE + 1)
    path = tmp_path / "out.bin"
    path.write_bytes(data)
    com = commit_file(path)
    assert com.chunks == 20
    for i in range(com.chunks):
        chunk, proof, _ = file_inclusion_proof(path, i)
        leaf = harness.leafHash(chunk).call()
        assert leaf == leaf_hash(chunk)
        assert harness.verifyInclusion(leaf, i, com.chunks, proof, com.root).call() is True
    chunk, proof, _ = file_inclusion_proof(path, 7)
    leaf = leaf_hash(chunk)
    verify = harness.verifyInclusion
    assert verify(leaf_hash(chunk[:-1] + b"?"), 7, 20, proof, com.root).call() is False, "tampered chunk"
    assert verify(leaf, 6, 20, proof, com.root).call() is False, "wrong index"
    assert verify(leaf, 7, 40, proof, com.root).call() is False, "wrong size"
    assert verify(leaf, 7, 20, [proof[0], flip(proof[1]), *proof[2:]], com.root).call() is False, "tampered proof"
    assert verify(leaf, 7, 20, proof[:-1], com.root).call() is False, "truncated proof"
    assert verify(leaf, 7, 20, proof, flip(com.root)).call() is False, "wrong root"
    assert verify(leaf, 20, 20, proof, com.root).call() is False, "index past the end"


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 13, 21])
def test_contract_agrees_with_python_on_reference_and_random_trees(harness, n):
    d = hashes(n, salt=7)
    root = merkle_root_of_leaves(d)
    for i in range(n):
        proof = inclusion_proof(d, i)
        assert harness.verifyInclusion(d[i], i, n, proof, root).call() is True
        for s in (n + 1, 2 * n):
            want = verify_inclusion(d[i], i, s, proof, root)
            assert harness.verifyInclusion(d[i], i, s, proof, root).call() is want
    for index, size, path in INCLUSION:
        proof = [bytes.fromhex(h) for h in path]
        assert harness.verifyInclusion(REF_HASHES[index], index, size, proof, ROOTS[size]).call() is True
