"""Offer policy: every rejection code, the order of the checks, exact money, device choice by memory."""

from __future__ import annotations

import base64
import json
import math
from dataclasses import replace
from decimal import Decimal
from fractions import Fraction
from typing import Any
from urllib.parse import quote, unquote, unquote_to_bytes

import pytest
from eth_utils import keccak, to_checksum_address

from node.chain.offers import ZERO_ADDRESS, JobOffer, workload_id
from node.compute.hardware import CpuInfo, GpuDevice, MachineCapacity, MigInstance
from node.config import Settings, default_settings
from node.jobs.policy import (
    CLAIM_LEAD_S,
    FIXED_OVERHEAD_S,
    Decision,
    DeviceProfile,
    Policy,
    RejectCode,
    data_uri_size,
    device_profiles,
)

NOW = 1_700_000_000
ME = "0x" + "cd" * 20
OTHER = "0x" + "ef" * 20
REQ = "0x" + "ab" * 20
TOKEN = 10**18
# matmul 1000³: 2e9 int8 ops, 6e6 operand bytes + 256 MiB workspace
PARAMS = json.dumps({"m": 1000, "k": 1000, "n": 1000, "seed": 7}).encode()
OPS = 2 * 1000**3
NEED = 6 * 10**6 + (256 << 20)
SLOW = DeviceProfile("cuda:0", 10 << 30, int8_ops_per_s=2e7, float_flops_per_s=1e9, watts=None)  # 100 s
FAST = DeviceProfile("cuda:1", 10 << 30, int8_ops_per_s=4e7, float_flops_per_s=5e8, watts=None)  # 50 s


def cfg(**over: Any) -> Settings:
    """Default settings with ``section__key=value`` overrides."""
    s = default_settings()
    by_section: dict[str, dict[str, Any]] = {}
    for key, value in over.items():
        section, name = key.split("__")
        by_section.setdefault(section, {})[name] = value
    return replace(s, **{sec: replace(getattr(s, sec), **vals) for sec, vals in by_section.items()})


def offer(**over: Any) -> JobOffer:
    fields: dict[str, Any] = dict(
        requester=REQ, provider=ZERO_ADDRESS, workload=workload_id("matmul-int8/v1"), paramsHash=keccak(PARAMS),
        inputHash=bytes(32), inputURI="", payment=TOKEN, providerBond=TOKEN // 10, maxDuration=3600,
        expiry=NOW + 600, nonce=1)
    fields.update(over)
    return JobOffer(**fields)


def decide(o: JobOffer | None = None, *, settings: Settings | None = None, devices=(SLOW,),
           params: bytes = PARAMS, fee_bps: int = 0, free_stake: int | None = None, now: int = NOW) -> Decision:
    policy = Policy(settings or cfg(), ME, devices)
    return policy.evaluate(o or offer(), params, now=now, fee_bps=fee_bps, free_stake=free_stake)


def test_accepts_and_quotes_a_good_offer_exactly() -> None:
    d = decide()
    assert d.ok and d.code is None and d.params == {"m": 1000, "k": 1000, "n": 1000, "seed": 7}
    q = d.quote
    assert q is not None and q.device == "cuda:0" and q.fits == ("cuda:0",)
    assert q.seconds == pytest.approx(100.0)
    assert q.price_floor == math.ceil(Fraction(q.seconds) * 10**14)  # 0.0001 tokens/s with 18 decimals
    assert q.power_cost == 0 and q.net_payment == TOKEN
    assert q.pay_per_second == pytest.approx(TOKEN / 100)
    assert "cuda:0" in d.reason and "1 tokens" in d.reason


def test_fee_is_taken_from_the_payment_as_the_contract_does() -> None:
    payment = TOKEN + 1
    q = decide(offer(payment=payment), fee_bps=250).quote
    assert q is not None and q.net_payment == payment - payment * 250 // 10_000
    assert q.pay_per_second == pytest.approx(q.net_payment / q.seconds)
    # a payment that clears the floor gross but not net is refused, and the reason names the fee
    floor = math.ceil(Fraction(100.0) * 10**14)
    tight = offer(payment=floor + 1)
    assert decide(tight).ok
    d = decide(tight, fee_bps=100)
    assert d.code is RejectCode.BELOW_PRICE_FLOOR
    assert "after the 1% market fee" in d.reason and "0.01 tokens" in d.reason
    with pytest.raises(ValueError, match="fee_bps"):
        decide(fee_bps=10_001)


def test_pay_per_second_ranks_better_paid_and_faster_work_higher() -> None:
    cheap, rich = decide(offer(payment=TOKEN)).quote, decide(offer(payment=2 * TOKEN)).quote
    assert cheap is not None and rich is not None and rich.pay_per_second == pytest.approx(2 * cheap.pay_per_second)
    on_fast = decide(devices=(FAST,)).quote
    assert on_fast is not None and on_fast.seconds == pytest.approx(50.0)
    assert on_fast.pay_per_second == pytest.approx(2 * cheap.pay_per_second)


def test_devices_are_chosen_by_memory_and_ordered_fastest_first() -> None:
    tiny_fastest = DeviceProfile("cuda:2", NEED - 1, 1e15, 1e15, None)
    unbounded_slowest = DeviceProfile("cuda:3", None, 1e7, 1e7, None)
    exact = replace(SLOW, vram_bytes=NEED)
    q = decide(devices=(unbounded_slowest, tiny_fastest, exact, FAST)).quote
    assert q is not None and q.fits == ("cuda:1", "cuda:0", "cuda:3") and q.device == "cuda:1"
    assert q.seconds == pytest.approx(OPS / FAST.int8_ops_per_s)
    d = decide(devices=(tiny_fastest, replace(tiny_fastest, name="cpu", vram_bytes=1 << 20)))
    assert d.code is RejectCode.NO_DEVICE and d.quote is None
    assert f"needs {NEED / 2**20:.1f} MiB" in d.reason and f"{(NEED - 1) / 2**20:.1f} MiB on cuda:2" in d.reason
    assert decide(devices=()).code is RejectCode.NO_DEVICE


def test_unestimable_work_is_priced_at_the_assumed_time_on_the_best_float_device() -> None:
    o = offer(workload=workload_id("torch-export/v1"), inputURI="https://example.org/b.pt2",
              inputHash=b"\x01" * 32)
    d = decide(o, params=b'{"inputs": ["x"]}', devices=(FAST, SLOW),
               settings=cfg(pricing__assumed_job_seconds=90.0))
    assert d.ok and d.quote is not None
    assert d.quote.seconds == 90.0 and d.quote.fits == ("cuda:0", "cuda:1")  # SLOW has more float FLOP/s


def test_tiny_jobs_are_priced_at_the_minimum_time() -> None:
    q = decide(devices=(replace(FAST, int8_ops_per_s=1e15),), settings=cfg(pricing__min_job_seconds=5.0)).quote
    assert q is not None and q.seconds == 5.0 and q.price_floor == 5 * 10**14


def test_price_floor_is_exact_integer_arithmetic() -> None:
    dev = replace(SLOW, int8_ops_per_s=3e7)  # 66.666... s, not a float-friendly number
    s = cfg(pricing__price_per_gpu_second=Decimal("0.000123456789123456789"), pricing__token_decimals=21)
    q = decide(devices=(dev,), settings=s).quote
    assert q is not None
    assert q.price_floor == math.ceil(Fraction(q.seconds) * 123456789123456789)


def test_power_cost_with_margin_is_exact_and_refuses_unprofitable_work() -> None:
    hot = replace(SLOW, watts=3600.0)  # 100 s at 3600 W = 0.1 kWh
    s = cfg(pricing__electricity_price_per_kwh=Decimal("0.5"), pricing__min_margin_pct=10.0)
    cost = 55 * 10**15  # 0.1 kWh × 0.5 tokens × 1.1
    assert decide(offer(payment=cost), devices=(hot,), settings=s).quote.power_cost == cost  # type: ignore[union-attr]
    assert decide(offer(payment=cost), devices=(hot,), settings=s).ok
    d = decide(offer(payment=cost - 1), devices=(hot,), settings=s)
    assert d.code is RejectCode.BELOW_POWER_COST and d.quote is not None
    assert "0.055 tokens" in d.reason and "3600 W" in d.reason and "10% margin" in d.reason
    # unknown draw or free electricity: not counted
    assert decide(offer(payment=cost - 1), devices=(SLOW,), settings=s).ok
    assert decide(offer(payment=cost - 1), devices=(hot,)).quote.power_cost == 0  # type: ignore[union-attr]


def test_deadline_needs_margin_and_fixed_overhead() -> None:
    needed = math.ceil(100 * 1.25 + FIXED_OVERHEAD_S)  # 155 s
    assert decide(offer(maxDuration=needed)).ok
    d = decide(offer(maxDuration=needed - 1))
    assert d.code is RejectCode.DEADLINE_INFEASIBLE and "maxDuration 154 s" in d.reason and "= 155 s" in d.reason
    d = decide(settings=cfg(hardware__job_timeout_s=99.0))
    assert d.code is RejectCode.DEADLINE_INFEASIBLE and "job_timeout_s" in d.reason


def test_offer_must_stay_open_long_enough_to_claim() -> None:
    assert decide(offer(expiry=NOW + CLAIM_LEAD_S)).ok
    d = decide(offer(expiry=NOW + CLAIM_LEAD_S - 1))
    assert d.code is RejectCode.OFFER_EXPIRING and "expires in 29 s" in d.reason
    assert "expired 5 s ago" in decide(offer(expiry=NOW - 5)).reason


def test_bond_limits() -> None:
    s = cfg(policy__max_bond=Decimal("0.5"))
    assert decide(offer(providerBond=TOKEN // 2), settings=s).ok
    d = decide(offer(providerBond=TOKEN // 2 + 1), settings=s)
    assert d.code is RejectCode.BOND_ABOVE_MAX and "0.500000000000000001 tokens" in d.reason
    assert decide(offer(providerBond=10**30)).ok  # max_bond 0 = no limit
    assert decide(free_stake=TOKEN // 10).ok
    d = decide(free_stake=TOKEN // 10 - 1)
    assert d.code is RejectCode.BOND_NOT_COVERED and "free stake 0.099999999999999999 tokens" in d.reason


def test_addressing_and_requester_lists_ignore_address_case() -> None:
    assert decide(offer(provider=to_checksum_address(ME))).ok
    assert decide(offer(provider=OTHER)).code is RejectCode.NOT_ADDRESSED
    deny = cfg(policy__deny_requesters=(REQ,))
    d = decide(offer(requester=REQ.upper().replace("0X", "0x")), settings=deny)
    assert d.code is RejectCode.REQUESTER_DENIED and to_checksum_address(REQ) in d.reason
    allow = cfg(policy__allow_requesters=(OTHER,))
    assert decide(settings=allow).code is RejectCode.REQUESTER_NOT_ALLOWED
    assert decide(offer(requester=OTHER), settings=allow).ok


def test_workloads_must_be_known_and_enabled_and_params_valid() -> None:
    d = decide(offer(workload=keccak(text="bogus/v1")))
    assert d.code is RejectCode.WORKLOAD_DISABLED and "unknown" in d.reason
    d = decide(settings=cfg(policy__workloads=("torch-export/v1",)))
    assert d.code is RejectCode.WORKLOAD_DISABLED and "matmul-int8/v1 is not enabled" in d.reason
    d = decide(params=b'{"m": 0, "k": 1, "n": 1, "seed": 1}')
    assert d.code is RejectCode.INVALID_PARAMS and "matmul-int8/v1" in d.reason and "m out of range" in d.reason
    assert decide(params=b"\xff").code is RejectCode.INVALID_PARAMS


@pytest.mark.parametrize(("uri", "has_hash", "allow_file", "fragment"), [
    ("", True, False, "hash given without a URI"),
    ("https://x.org/a", False, False, "without an input hash"),
    ("ftp://x.org/a", True, False, "scheme 'ftp' is not allowed"),
    ("x.org/a", True, False, "scheme (none)"),
    ("https://x.org/a b", True, False, "spaces or control"),
    ("file:///etc/passwd", True, False, "allow_file_inputs"),
    ("data:;base64,abc", True, False, "malformed data: URI"),
    ("data:text/plain", True, False, "malformed data: URI"),
])
def test_input_uris_the_fetcher_would_refuse(uri: str, has_hash: bool, allow_file: bool, fragment: str) -> None:
    d = decide(offer(inputURI=uri, inputHash=b"\x01" * 32 if has_hash else bytes(32)),
               settings=cfg(policy__allow_file_inputs=allow_file))
    assert d.code is RejectCode.INPUT_NOT_ALLOWED and fragment in d.reason
    assert d.params is not None  # params were validated first


def test_allowed_input_uris() -> None:
    h = b"\x01" * 32
    for uri in ("http://x.org/a", "https://x.org/a", "data:,hello"):
        assert decide(offer(inputURI=uri, inputHash=h)).ok, uri
    on = cfg(policy__allow_file_inputs=True)
    assert decide(offer(inputURI="file:///data/a.bin", inputHash=h), settings=on).ok


def test_data_uri_size_is_capped_without_decoding() -> None:
    s = cfg(policy__max_input_bytes=9)
    body = base64.b64encode(b"123456789").decode()
    assert decide(offer(inputURI=f"data:application/octet-stream;base64,{body}", inputHash=b"\x01" * 32),
                  settings=s).ok
    d = decide(offer(inputURI="data:;base64," + base64.b64encode(b"0123456789").decode(), inputHash=b"\x01" * 32),
               settings=s)
    assert d.code is RejectCode.INPUT_TOO_LARGE and "10 bytes" in d.reason and "max_input_bytes 9" in d.reason


@pytest.mark.parametrize("raw", [b"", b"a", b"ab", b"abc", b"abcd", bytes(range(256)) * 3, b"\xfb\xff"])
def test_data_uri_size_matches_a_real_decode(raw: bytes) -> None:
    b64 = base64.b64encode(raw).decode()
    for uri in (f"data:;base64,{b64}", f"data:x/y;BASE64,{quote(b64, safe='')}"):
        assert data_uri_size(uri) == len(base64.b64decode(unquote(uri.partition(",")[2]))) == len(raw)
    plain = "data:," + quote(raw, safe="") + "é"
    assert data_uri_size(plain) == len(unquote_to_bytes(plain.partition(",")[2]))


def run(st: dict[str, Any]) -> Decision:
    return decide(offer(**st["offer"]), settings=st["settings"], devices=st["devices"], params=st["params"],
                  free_stake=st["free_stake"])


def test_every_reject_code_is_reachable_and_the_first_failing_check_wins() -> None:
    """Start from an offer that breaks every rule, then mend one rule at a time: the codes must come
    out in the documented order and cover every RejectCode."""
    s = cfg(policy__allow_requesters=(OTHER,), policy__deny_requesters=(REQ,), policy__max_bond=Decimal("1"),
            policy__max_input_bytes=3, pricing__electricity_price_per_kwh=Decimal("1000"),
            policy__workloads=("torch-export/v1",))
    hot = replace(SLOW, watts=500.0)
    state: dict[str, Any] = dict(
        offer=dict(workload=keccak(text="nope/v1"), provider=OTHER, requester=REQ, inputHash=b"\x01" * 32,
                   inputURI="gopher://x", providerBond=2 * TOKEN, payment=1, maxDuration=1, expiry=NOW),
        settings=s, params=b"[]", devices=(replace(hot, vram_bytes=1),), free_stake=0)
    fixes = [
        (RejectCode.WORKLOAD_DISABLED, lambda st: st["offer"].update(workload=workload_id("matmul-int8/v1"))),
        (RejectCode.WORKLOAD_DISABLED, lambda st: st.update(settings=replace(
            st["settings"], policy=replace(st["settings"].policy, workloads=("matmul-int8/v1",))))),
        (RejectCode.NOT_ADDRESSED, lambda st: st["offer"].update(provider=ME)),
        # off the deny list but not on the allow list, so the allow list speaks next
        (RejectCode.REQUESTER_DENIED, lambda st: st["offer"].update(requester="0x" + "12" * 20)),
        (RejectCode.REQUESTER_NOT_ALLOWED, lambda st: st["offer"].update(requester=OTHER)),
        (RejectCode.INVALID_PARAMS, lambda st: st.update(params=PARAMS)),
        (RejectCode.INPUT_NOT_ALLOWED, lambda st: st["offer"].update(inputURI="data:,abcd")),
        (RejectCode.INPUT_TOO_LARGE, lambda st: st["offer"].update(inputURI="data:,abc")),
        (RejectCode.BOND_ABOVE_MAX, lambda st: st["offer"].update(providerBond=TOKEN)),
        (RejectCode.BOND_NOT_COVERED, lambda st: st.update(free_stake=TOKEN)),
        (RejectCode.NO_DEVICE, lambda st: st.update(devices=(hot,))),
        (RejectCode.BELOW_PRICE_FLOOR, lambda st: st["offer"].update(payment=10**16)),
        (RejectCode.BELOW_POWER_COST, lambda st: st["offer"].update(payment=TOKEN * 100)),
        (RejectCode.DEADLINE_INFEASIBLE, lambda st: st["offer"].update(maxDuration=3600)),
        (RejectCode.OFFER_EXPIRING, lambda st: st["offer"].update(expiry=NOW + 600)),
    ]
    seen = []
    for code, fix in fixes:
        d = run(state)
        assert not d.ok and d.code is code, (code, d)
        assert (d.quote is not None) == (code in _PRICED), code  # a quote exists once pricing ran
        seen.append(code)
        fix(state)
    assert set(seen) == set(RejectCode)
    assert run(state).ok


_PRICED = {RejectCode.BELOW_PRICE_FLOOR, RejectCode.BELOW_POWER_COST, RejectCode.DEADLINE_INFEASIBLE,
           RejectCode.OFFER_EXPIRING}


def _gpu(index: int, mib: int | None, *, uuid: str, mig: tuple[MigInstance, ...] = ()) -> GpuDevice:
    return GpuDevice(index=index, uuid=uuid, name="GPU", vram_total_mib=mib, vram_free_mib=mib,
                     compute_capability=(9, 0), driver_version=None, cuda_version=None, power_draw_w=None,
                     power_limit_w=None, utilization_pct=None, processes=(), mig_enabled=bool(mig),
                     mig_instances=mig)


CPU = CpuInfo(model="cpu", cores=8, physical_cores=4, usable_cores=8, ram_total_mib=32768, ram_available_mib=16000)


def _att(*names: str) -> dict:
    return {"devices": [{"device": n, "name": n, "int8_tops": 1.5, "float_kind": "bf16", "float_tflops": 0.25}
                        for n in names]}


def test_device_profiles_from_the_attestation() -> None:
    mig = (MigInstance(0, "MIG-a", "slice", 40960, 40000), MigInstance(1, "MIG-b", "slice", 20480, 20000))
    cap = MachineCapacity("nvml", (_gpu(0, 81920, uuid="GPU-a"), _gpu(1, 81920, uuid="GPU-b", mig=mig)), CPU, ())
    s = cfg(hardware__gpu_memory_fraction=0.5, pricing__device_watts=100.0)
    p0, p1, p7 = device_profiles(_att("cuda:0", "cuda:1", "cuda:7"), cap, s, watts={"cuda:0": 350.0})
    assert p0 == DeviceProfile("cuda:0", 81920 * 2**20 // 2, 1.5e12, 0.25e12, 350.0)
    assert p1.vram_bytes == 20480 * 2**20 // 2 and p1.watts == 100.0  # smallest MIG slice; fallback watts
    assert p7.vram_bytes is None  # not detected: unbounded, the worker still caps it
    only_b = cfg(hardware__devices=("GPU-b",))
    assert [p.name for p in device_profiles(_att("cuda:0", "cuda:1"), cap, only_b)] == ["cuda:1"]
    assert device_profiles(_att("cuda:0"), cap, cfg())[0].watts is None  # device_watts 0 = not counted


def test_cpu_profile_uses_the_worker_memory_budget() -> None:
    cap = MachineCapacity("cpu", (), CPU, ())
    (p,) = device_profiles(_att("cpu"), cap, cfg(hardware__cpu_worker_memory_mb=2048))
    assert p.name == "cpu" and p.vram_bytes == 2048 * 2**20
    assert device_profiles(_att("cpu"), cap, cfg(hardware__allow_cpu=False)) == []
    with pytest.raises(ValueError, match="devices\\[0\\]"):
        device_profiles({"devices": [{"device": "cpu"}]}, cap, cfg())
    with pytest.raises(ValueError, match="no 'devices'"):
        device_profiles({}, cap, cfg())
