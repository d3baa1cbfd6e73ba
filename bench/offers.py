"""Local offer verification against the secp256k1 floor, on one core.

``check_offer_local`` does per offer: domain and terms checks, the EIP-712 digest (three keccaks), the
signature rules and one public-key recovery. Recovery is the irreducible part, so the bare eth-keys
recovery rate over the same precomputed digests and signatures is the ceiling it is measured against
(the raw libsecp256k1 rate through coincurve is shown too). Offers, keys and signatures are all distinct
and made before timing; each round re-derives every digest and checksum (nothing cached per offer).
The sides are timed in short interleaved chunks, so drift in machine load hits all alike and a time slice
stolen by a neighbour spoils one chunk rather than the figure: the median chunk rate is the per-core rate
that is compared and judged; the whole-run rate (stolen time included) is shown beside it.

Goal (issue: offer verification): >= 5,000 offers/s through check_offer_local on one core.

    .venv/bin/python -m bench.offers [--count 2000] [--rounds 5] [--chunk 100] [--cpu 0] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Callable

import coincurve
from eth_keys import keys
from eth_utils import keccak

from node.chain import offers as offers_module
from node.chain import verify as verify_module
from node.chain.offers import JobOffer, sign_offer, workload_id
from node.chain.verify import SignedOffer, check_offer_local

GOAL = 5_000
CHAIN_ID = 31337
MARKET = "0x5FC8d32690cc91D4c39d9d3abcBD16989F875707"
NOW = 1_800_000_000


def _offers(count: int, seed: int) -> list[SignedOffer]:
    rng = random.Random(seed)
    out = []
    for i in range(count):
        key = keys.PrivateKey(rng.randbytes(32))
        params = rng.randbytes(rng.randrange(0, 512))
        offer = JobOffer(
            requester=key.public_key.to_checksum_address(),
            provider="0x" + rng.randbytes(20).hex() if rng.random() < 0.5 else "0x" + "00" * 20,
            workload=workload_id(f"matmul-int8/v{i % 3}"), paramsHash=keccak(params),
            inputHash=rng.randbytes(32), inputURI=f"ipfs://bafy{rng.randbytes(rng.randrange(8, 64)).hex()}",
            payment=rng.randrange(1, 2**100), providerBond=rng.randrange(0, 2**100),
            maxDuration=rng.randrange(1, 365 * 86400), expiry=NOW + rng.randrange(1, 10**6),
            nonce=rng.randrange(2**256),
        )
        out.append(SignedOffer(offer, sign_offer(offer, key.to_bytes(), CHAIN_ID, MARKET), CHAIN_ID, MARKET, params))
    return out


def run(count: int, rounds: int, chunk: int, seed: int) -> dict[str, object]:
    signed = _offers(count, seed)
    digests = [s.job_id for s in signed]
    vrs = [(s.signature[64] - 27, int.from_bytes(s.signature[:32], "big"), int.from_bytes(s.signature[32:64], "big"))
           for s in signed]
    raw = [s.signature[:64] + bytes((s.signature[64] - 27,)) for s in signed]
    wire = [json.dumps(s.to_json()) for s in signed]

    def local(lo: int, hi: int) -> None:
        for s in signed[lo:hi]:
            verdict = check_offer_local(s, chain_id=CHAIN_ID, market=MARKET, now=NOW)
            if not verdict.ok:
                raise SystemExit(f"valid offer rejected: {verdict}")

    def eth_keys_recover(lo: int, hi: int) -> None:
        for (v, r, s), digest in zip(vrs[lo:hi], digests[lo:hi], strict=True):
            keys.Signature(vrs=(v, r, s)).recover_public_key_from_msg_hash(digest).to_canonical_address()

    def coincurve_recover(lo: int, hi: int) -> None:
        for sig, digest in zip(raw[lo:hi], digests[lo:hi], strict=True):
            coincurve.PublicKey.from_signature_and_message(sig, digest, hasher=None)

    def wire_path(lo: int, hi: int) -> None:
        for text in wire[lo:hi]:
            if not check_offer_local(SignedOffer.from_json(text), chain_id=CHAIN_ID, market=MARKET, now=NOW).ok:
                raise SystemExit("valid wire offer rejected")

    sides: dict[str, Callable[[int, int], None]] = {
        "local": local, "eth_keys": eth_keys_recover, "coincurve": coincurve_recover, "wire": wire_path}
    chunk_rates: dict[str, list[float]] = {k: [] for k in sides}
    totals = dict.fromkeys(sides, 0.0)
    for _ in range(rounds):
        for s in signed:  # every round derives every digest again
            s.__dict__.pop("job_id", None)
        offers_module._checksummed.cache_clear()  # and checksums every address again, as for new senders
        verify_module._checksum.cache_clear()
        for lo in range(0, count, chunk):  # short interleaved chunks: a stolen time slice spoils one chunk
            hi = min(count, lo + chunk)
            for name, fn in sides.items():
                start = time.perf_counter()
                fn(lo, hi)
                elapsed = time.perf_counter() - start
                totals[name] += elapsed
                chunk_rates[name].append((hi - lo) / elapsed)
    rate = {k: statistics.median(v) for k, v in chunk_rates.items()}
    overall = {k: count * rounds / t for k, t in totals.items()}
    return {
        "count": count, "rounds": rounds, "chunk": chunk, "cpu": sorted(os.sched_getaffinity(0)),
        "loadavg_1m": os.getloadavg()[0],
        "local_per_s": round(rate["local"]), "recover_eth_keys_per_s": round(rate["eth_keys"]),
        "recover_coincurve_per_s": round(rate["coincurve"]), "wire_per_s": round(rate["wire"]),
        "overall_local_per_s": round(overall["local"]), "overall_recover_eth_keys_per_s": round(overall["eth_keys"]),
        "overall_recover_coincurve_per_s": round(overall["coincurve"]), "overall_wire_per_s": round(overall["wire"]),
        "ratio_local_to_eth_keys": round(rate["local"] / rate["eth_keys"], 3),
        "ratio_local_to_coincurve": round(rate["local"] / rate["coincurve"], 3),
        "overall_ratio_local_to_eth_keys": round(overall["local"] / overall["eth_keys"], 3),
        "goal_per_s": GOAL, "goal_met": rate["local"] >= GOAL,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=2000, help="distinct offers (and keys)")
    ap.add_argument("--rounds", type=int, default=5, help="passes over all offers")
    ap.add_argument("--chunk", type=int, default=100, help="offers per timed chunk")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--cpu", type=int, default=None, help="pin to this CPU (default: the first allowed one)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = ap.parse_args(argv)
    cpu = args.cpu if args.cpu is not None else min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    res = run(args.count, args.rounds, args.chunk, args.seed)
    if args.json:
        print(json.dumps(res))
        return 0
    print(f"{res['count']} distinct offers and keys x {res['rounds']} rounds, chunks of {res['chunk']}, "
          f"CPU {cpu}, load average {res['loadavg_1m']:.2f}")
    print("                               median chunk   whole run")
    for label, key, unit in (("check_offer_local", "local_per_s", "offers/s"),
                             ("bare recovery, eth-keys", "recover_eth_keys_per_s", "/s"),
                             ("bare recovery, coincurve", "recover_coincurve_per_s", "/s"),
                             ("from_json(text) + check", "wire_per_s", "offers/s")):
        print(f"  {label:<27}{res[key]:>10}   {res['overall_' + key]:>10}   {unit}")
    print(f"  ratio local / eth-keys recovery  {res['ratio_local_to_eth_keys']:.3f}   "
          f"(whole run {res['overall_ratio_local_to_eth_keys']:.3f}; "
          f"/ coincurve {res['ratio_local_to_coincurve']:.3f})")
    print(f"  goal >= {GOAL} offers/s (median chunk)  {'MET' if res['goal_met'] else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
