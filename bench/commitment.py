"""Throughput of result commitments against the hashing floor.

``commit_file`` does one SHA-256 pass over the data plus one small node hash per 4 KiB chunk, so raw
``hashlib.sha256`` over the same bytes, read the same way, is the ceiling it is measured against.
The file is written just before timing, so both runs read it from the page cache (given the RAM).

    .venv/bin/python -m bench.commitment --size-mib 512
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from node.compute import commitment


def _write_random(path: Path, size: int) -> None:
    piece = 64 << 20
    with open(path, "wb") as f:
        for off in range(0, size, piece):
            f.write(os.urandom(min(piece, size - off)))


def _raw_sha256(path: Path) -> bytes:
    h = hashlib.sha256()
    buf = bytearray(commitment.READ_SIZE)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while got := f.readinto(buf):
            h.update(view[:got])
    return h.digest()


def _best(fn: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024, help="size of the random file (default 1024)")
    ap.add_argument("--dir", type=Path, default=None, help="where to write it (default: a temporary dir)")
    ap.add_argument("--repeat", type=int, default=3, help="best of this many runs (default 3)")
    args = ap.parse_args(argv)
    if args.size_mib <= 0 or args.repeat <= 0:
        ap.error("--size-mib and --repeat must be positive")
    size = args.size_mib << 20
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="commitment-bench-") as tmp:
        path = Path(tmp) / "result.bin"
        _write_random(path, size)
        com = commitment.commit_file(path)  # also warms the page cache
        t_commit = _best(lambda: commitment.commit_file(path), args.repeat)
        t_raw = _best(lambda: _raw_sha256(path), args.repeat)
    gbps_commit, gbps_raw = size / t_commit / 1e9, size / t_raw / 1e9
    print(f"file:        {args.size_mib} MiB, {com.chunks} chunks of {commitment.CHUNK_SIZE} B, root {com.root.hex()}")
    print(f"commit_file: {gbps_commit:.3f} GB/s ({t_commit:.3f} s, best of {args.repeat})")
    print(f"raw sha256:  {gbps_raw:.3f} GB/s ({t_raw:.3f} s, best of {args.repeat})")
    print(f"ratio:       {gbps_commit / gbps_raw:.2f} of raw sha256")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
