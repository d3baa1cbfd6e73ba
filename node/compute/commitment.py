"""Result commitments: an output file as an RFC 6962 Merkle tree over fixed 4 KiB chunks.

A provider posts one 32-byte root for a result of any size; a challenger can later demand a single chunk
and check it against that root with a log-sized audit path, on-chain (``MerkleRfc6962.sol``) or off.
RFC 6962 hashing (SHA-256, domain-separated leaves and nodes, split at the largest power of two) is
used unchanged so that any Certificate Transparency verifier agrees with ours, and so that the EVM's
sha256 precompile can check proofs cheaply.

Everything streams: committing a multi-GB file holds one read buffer plus O(log n) subtree roots.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from hashlib import sha256

CHUNK_SIZE = 4096
HASH_SIZE = 32
#: Bytes per read when streaming a file: large enough that syscalls vanish next to hashing, and a
#: multiple of CHUNK_SIZE so every read but the last yields whole chunks (and a perfect subtree).
READ_SIZE = 1024 * CHUNK_SIZE
#: Leaf hashes taken from a caller's sequence at once, so huge lists are never copied whole.
_BATCH = 4096

_EMPTY_ROOT = sha256(b"").digest()
_LEAF_STATE = sha256(b"\x00")

#: ``progress(bytes_done, bytes_total)`` after each read.
Progress = Callable[[int, int], None]


def leaf_hash(chunk: bytes) -> bytes:
    """RFC 6962 leaf hash; the 0x00 prefix keeps a leaf from ever being passed off as an inner node."""
    h = _LEAF_STATE.copy()
    h.update(chunk)
    return h.digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 6962 interior node hash (0x01 prefix)."""
    return sha256(b"\x01" + left + right).digest()


def _perfect_root(hashes: Sequence[bytes]) -> bytes:
    """Root of a perfect subtree (power-of-two leaves), level by level: the cheapest loop in CPython."""
    h = sha256
    while len(hashes) > 1:
        hashes = [h(b"\x01" + hashes[i] + hashes[i + 1]).digest() for i in range(0, len(hashes), 2)]
    return hashes[0]


class _Frontier:
    """The right edge of a growing tree: roots of perfect subtrees of strictly decreasing size, which
    is all RFC 6962's MTH needs to be computed as leaves arrive, in O(log n) memory."""

    __slots__ = ("count", "_sizes", "_roots")

    def __init__(self) -> None:
        self.count = 0
        self._sizes: list[int] = []
        self._roots: list[bytes] = []

    def extend(self, hashes: Sequence[bytes]) -> None:
        """Appends leaf hashes in the largest power-of-two runs that stay aligned with what came before."""
        pos, n = 0, len(hashes)
        while pos < n:
            size = 1 << ((n - pos).bit_length() - 1)
            if self.count:
                size = min(size, self.count & -self.count)
            self._push(_perfect_root(hashes[pos:pos + size]), size)
            pos += size

    def _push(self, root: bytes, size: int) -> None:
        self.count += size
        sizes, roots = self._sizes, self._roots
        while sizes and sizes[-1] == size:
            sizes.pop()
            root = node_hash(roots.pop(), root)
            size *= 2
        sizes.append(size)
        roots.append(root)

    def root(self) -> bytes:
        """MTH so far: the perfect subtrees folded right to left, which is exactly where RFC 6962 splits."""
        if not self._roots:
            return _EMPTY_ROOT
        acc = self._roots[-1]
        for r in reversed(self._roots[:-1]):
            acc = node_hash(r, acc)
        return acc


def _subtree_root(leaf_hashes: Sequence[bytes], lo: int, hi: int) -> bytes:
    frontier = _Frontier()
    for start in range(lo, hi, _BATCH):
        frontier.extend(leaf_hashes[start:min(start + _BATCH, hi)])
    return frontier.root()


def merkle_root_of_leaves(leaf_hashes: Sequence[bytes]) -> bytes:
    """RFC 6962 MTH over already-hashed leaves; SHA-256 of nothing for an empty list, as the RFC says."""
    return _subtree_root(leaf_hashes, 0, len(leaf_hashes))


@dataclass(frozen=True)
class Commitment:
    """What a provider posts for a result. ``chunks`` is the tree size proofs must be checked against,
    and must be stored with the root: a proof fixes a leaf's path shape, not the tree size, so a size
    taken from the prover could let one proof pass for a different tree (see verify_inclusion)."""

    root: bytes
    size: int  # bytes
    chunks: int  # leaves, ceil(size / CHUNK_SIZE)


def _chunk_count(size: int) -> int:
    return -(-size // CHUNK_SIZE)


def _leaf_hashes(buf: memoryview) -> list[bytes]:
    cp = _LEAF_STATE.copy
    out: list[bytes] = []
    append = out.append
    for off in range(0, len(buf), CHUNK_SIZE):
        h = cp()
        h.update(buf[off:off + CHUNK_SIZE])
        append(h.digest())
    return out


def commit_bytes(data: bytes) -> Commitment:
    """The commitment to an in-memory result (same root as ``commit_file`` on those bytes)."""
    view = memoryview(data).cast("B")
    frontier = _Frontier()
    for off in range(0, len(view), READ_SIZE):
        frontier.extend(_leaf_hashes(view[off:off + READ_SIZE]))
    return Commitment(frontier.root(), len(view), frontier.count)


def _read_blocks(path: str | os.PathLike[str], progress: Progress | None) -> Iterator[tuple[int, memoryview]]:
    """(byte offset, block) pairs; the block's buffer is reused, so callers must be done with it first."""
    with open(path, "rb", buffering=0) as f:
        total = os.fstat(f.fileno()).st_size
        buf = bytearray(READ_SIZE)
        view = memoryview(buf)
        done = 0
        while True:
            filled = 0
            while filled < READ_SIZE:  # fill whole blocks so they stay chunk-aligned on short reads
                got = f.readinto(view[filled:])
                if not got:
                    break
                filled += got
            if not filled:
                return
            yield done, view[:filled]
            done += filled
            if progress is not None:
                progress(done, max(total, done))
            if filled < READ_SIZE:
                return


def commit_file(path: str | os.PathLike[str], *, progress: Progress | None = None) -> Commitment:
    """The commitment to a result on disk, in one streaming pass. Single-threaded on purpose: hashing 4 KiB
    leaves on several threads measured slower here (GIL hand-offs per chunk outweigh the hashing)."""
    frontier = _Frontier()
    size = 0
    for _, block in _read_blocks(path, progress):
        frontier.extend(_leaf_hashes(block))
        size += len(block)
    return Commitment(frontier.root(), size, frontier.count)


def _path_ranges(index: int, n: int) -> list[tuple[int, int]]:
    """Leaf ranges whose roots form PATH(index, D[n]), bottom-up: the RFC's recursion, unrolled top-down."""
    if not 0 <= index < n:
        raise ValueError(f"leaf index {index} is outside a tree of {n} leaves")
    lo, hi, ranges = 0, n, []
    while hi - lo > 1:
        k = 1 << ((hi - lo - 1).bit_length() - 1)  # largest power of two < hi - lo
        if index < lo + k:
            ranges.append((lo + k, hi))
            hi = lo + k
        else:
            ranges.append((lo, lo + k))
            lo += k
    ranges.reverse()
    return ranges


def inclusion_proof(leaf_hashes: Sequence[bytes], index: int) -> list[bytes]:
    """RFC 6962 audit path PATH(index, D[n]) for leaf ``index`` of the tree over ``leaf_hashes``."""
    return [_subtree_root(leaf_hashes, lo, hi) for lo, hi in _path_ranges(index, len(leaf_hashes))]


def file_inclusion_proof(path: str | os.PathLike[str], index: int) -> tuple[bytes, list[bytes], Commitment]:
    """(chunk ``index``, its audit path, the file's commitment), in one streaming pass: the path's sibling
    subtrees are disjoint leaf ranges known up front, so each is built as its leaves stream by."""
    size = os.stat(path).st_size
    n = _chunk_count(size)
    siblings = _path_ranges(index, n)
    # The siblings and the leaf itself tile [0, n); stream leaves into whichever range they fall in.
    order = sorted([*siblings, (index, index + 1)])
    frontiers = {rng: _Frontier() for rng in order}
    chunk = b""
    slot = 0
    changed = ValueError(f"{os.fspath(path)} changed size while it was being read")
    for offset, block in _read_blocks(path, None):
        if offset + len(block) > size:
            raise changed
        first = offset // CHUNK_SIZE
        if first <= index < first + _chunk_count(len(block)):
            start = (index - first) * CHUNK_SIZE
            chunk = bytes(block[start:start + CHUNK_SIZE])
        hashes = _leaf_hashes(block)
        pos = 0
        while pos < len(hashes):
            hi = order[slot][1]
            take = min(len(hashes) - pos, hi - (first + pos))
            frontiers[order[slot]].extend(hashes[pos:pos + take])
            pos += take
            if first + pos == hi:
                slot += 1
    if slot != len(order):
        raise changed
    proof = [frontiers[rng].root() for rng in siblings]
    root = _root_from_path(leaf_hash(chunk), index, n, proof)
    return chunk, proof, Commitment(root, size, n)


def _root_from_path(leaf: bytes, index: int, tree_size: int, proof: Sequence[bytes]) -> bytes | None:
    """RFC 9162 §2.1.3.2 steps 1-4: the root a proof implies, or None where the steps say to fail."""
    if index >= tree_size:
        return None
    fn, sn, r = index, tree_size - 1, bytes(leaf)
    for p in proof:
        if sn == 0 or len(p) != HASH_SIZE:
            return None
        if fn & 1 or fn == sn:
            r = node_hash(bytes(p), r)
            while not fn & 1 and fn:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, bytes(p))
        fn >>= 1
        sn >>= 1
    return r if sn == 0 else None


def verify_inclusion(leaf_hash: bytes, index: int, tree_size: int, proof: Sequence[bytes], root: bytes) -> bool:
    """RFC 9162 §2.1.3.2: does ``proof`` show the leaf with this hash at ``index`` in the tree with ``root``?

    A malformed proof (index past the end, too few or too many hashes, hashes of the wrong length) is
    simply not a proof, so it yields False; only arguments no caller could mean raise ValueError.
    ``tree_size`` must be the committed one (``Commitment.chunks``): sizes giving the leaf the same path
    shape, e.g. 5 to 8 for leaf 0, accept the same proof.
    """
    if index < 0 or tree_size < 0:
        raise ValueError(f"index and tree_size must be non-negative, got {index} and {tree_size}")
    if len(leaf_hash) != HASH_SIZE or len(root) != HASH_SIZE:
        return False
    got = _root_from_path(leaf_hash, index, tree_size, proof)
    return got is not None and got == bytes(root)
