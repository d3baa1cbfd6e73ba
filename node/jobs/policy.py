"""Offer policy: should this node take a job, on which device, and what is it worth per second?

Every offer is attacker-controlled and a claim locks a bond, so the node decides before it spends gas
whether it wants the job at all. ``Policy.evaluate`` is pure (no I/O, no clock): the caller supplies the
time, the market's fee and the free stake, which keeps the decision reproducible and testable, and the
same rules apply to offers heard on chain and offers posted to the API.

Checks run cheapest and most fundamental first, and the first failing one decides, so a rejection names
exactly one reason. Each reason is meant for a human reading a log or an API reply, so it states the
numbers involved in tokens (the configured decimals) and seconds, never in raw base units.

Money is integer base units throughout; the few products with fractional factors (seconds, watts,
percentages) are done in Decimal and rounded up, so a floor is never undercut by float rounding.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal, localcontext
from enum import StrEnum
from urllib.parse import unquote

from node.chain.offers import ZERO_ADDRESS, JobOffer
from node.compute.hardware import MachineCapacity
from node.compute.workloads import Estimate, ParamsError, Workload, all_workloads
from node.config import Settings, to_base_units

CLAIM_LEAD_S = 30  # an offer must stay open this long for our claim transaction to be mined
FIXED_OVERHEAD_S = 30  # per job: fetch, commit and submit, on top of the compute estimate
BPS = 10_000
_MIB = 1 << 20
_PCT_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")


class RejectCode(StrEnum):
    """Machine-readable rejection reasons: the offers_rejected metric label and the journal code."""

    WORKLOAD_DISABLED = "workload_disabled"
    NOT_ADDRESSED = "not_addressed_to_us"
    REQUESTER_DENIED = "requester_denied"
    REQUESTER_NOT_ALLOWED = "requester_not_allowed"
    INVALID_PARAMS = "invalid_params"
    BELOW_PRICE_FLOOR = "below_price_floor"
    BELOW_POWER_COST = "below_power_cost"
    NO_DEVICE = "no_device_fits"
    DEADLINE_INFEASIBLE = "deadline_infeasible"
    OFFER_EXPIRING = "offer_expiring"
    BOND_ABOVE_MAX = "bond_above_max"
    BOND_NOT_COVERED = "bond_not_covered"
    INPUT_TOO_LARGE = "input_too_large"
    INPUT_NOT_ALLOWED = "input_not_allowed"


@dataclass(frozen=True)
class DeviceProfile:
    """One place jobs can run, with this machine's measured speed (see ``device_profiles``)."""

    name: str  # worker device name == torch device string: "cpu", "cuda:0"
    vram_bytes: int | None  # memory jobs may use (already x gpu_memory_fraction); None = unknown/unbounded
    int8_ops_per_s: float  # from the bench attestation (int8_tops * 1e12)
    float_flops_per_s: float  # from the attestation (float_tflops * 1e12)
    watts: float | None  # measured draw (NVML) or pricing.device_watts; None/0 = not counted


@dataclass(frozen=True)
class Quote:
    device: str  # the fastest device that fits (fits[0])
    seconds: float  # estimated run time on that device (>= pricing.min_job_seconds)
    price_floor: int  # base units: seconds * price_per_gpu_second_units, rounded up
    power_cost: int  # base units: kWh * electricity price * (1 + min_margin_pct/100), rounded up; 0 = n/a
    net_payment: int  # payment - payment*fee_bps/10000 (floored, as the contract takes the fee)
    pay_per_second: float  # net_payment / seconds: the scheduler ranks by this
    fits: tuple[str, ...]  # every device that can run it (VRAM), best (fastest) first


@dataclass(frozen=True)
class Decision:
    ok: bool
    code: RejectCode | None  # None when ok
    reason: str  # human sentence with the numbers; a short summary when ok
    quote: Quote | None  # set once pricing was reached (also on the later rejections)
    params: dict | None  # validated params, once they validated


def _tokens(units: int, decimals: int) -> str:
    """Base units as a plain decimal token amount ("0.05"), exact at any size (2**256 has 78 digits)."""
    with localcontext() as ctx:
        ctx.prec = 120
        text = format(Decimal(units).scaleb(-decimals).normalize(), "f")
    return text


def _secs(s: float) -> str:
    return f"{s:.0f} s" if s >= 1000 else f"{s:.4g} s"


def _bytes(n: int) -> str:
    if n >= 1 << 30:
        return f"{n / (1 << 30):.2f} GiB"
    return f"{n / _MIB:.1f} MiB" if n >= _MIB else f"{n} bytes"


def _ceil_units(*factors: Decimal | int | float, divisor: int = 1) -> int:
    """ceil(product / divisor), exact: floats enter as their exact binary value, and the precision is
    wide enough that a 78-digit amount times a float never rounds; the one division is either exact or
    rounded far below the integer boundary that ceil looks at."""
    with localcontext() as ctx:
        ctx.prec = 200
        value = Decimal(1)
        for f in factors:
            value *= Decimal(f)
        return int((value / divisor).to_integral_value(rounding=ROUND_CEILING))


def data_uri_size(uri: str) -> int | None:
    """Decoded size of a ``data:`` URI by length arithmetic alone, or None when it is malformed.

    Mirrors node.compute.inputs (RFC 2397, percent-escapes undone before base64) without materialising
    the payload, so a huge inline input costs nothing beyond the URI the node already holds.
    """
    header, sep, payload = uri[len("data:"):].partition(",")
    if not sep:
        return None
    escapes = sum(1 for _ in _PCT_ESCAPE.finditer(payload))
    if not header.lower().endswith(";base64"):
        return len(payload.encode("utf-8")) - 2 * escapes
    if escapes:  # rare: escaped base64; the unquoted text is no longer than the URI itself
        payload = unquote(payload)
    if len(payload) % 4 or not _BASE64.fullmatch(payload):
        return None
    return len(payload) // 4 * 3 - (len(payload) - len(payload.rstrip("=")))


class Policy:
    """The node's acceptance rules over a fixed set of devices; cheap to call once per offer."""

    def __init__(self, settings: Settings, provider: str, devices: Sequence[DeviceProfile]) -> None:
        self.settings = settings
        self.provider = provider.lower()
        self._provider_shown = provider
        self.devices = tuple(devices)
        pol, pr = settings.policy, settings.pricing
        self._decimals = pr.token_decimals
        self._known: dict[bytes, Workload] = {w.id: w for w in all_workloads()}
        self._enabled = frozenset(pol.workloads)
        self._allow = frozenset(a.lower() for a in pol.allow_requesters)
        self._deny = frozenset(a.lower() for a in pol.deny_requesters)
        self._max_bond = to_base_units(pol.max_bond, pr.token_decimals)
        self._price = pr.price_per_gpu_second_units
        # electricity price per kWh in base units, already with the margin: one Decimal, no rounding yet
        with localcontext() as ctx:
            ctx.prec = 200
            self._kwh = (pr.electricity_price_per_kwh.scaleb(pr.token_decimals)
                         * (1 + Decimal(str(pr.min_margin_pct)) / 100))

    def _tok(self, units: int) -> str:
        return f"{_tokens(units, self._decimals)} tokens"

    def evaluate(self, offer: JobOffer, params: bytes, *, now: int, fee_bps: int,
                 free_stake: int | None) -> Decision:
        """Decide on one offer. ``now`` is unix seconds (chain time preferred), ``fee_bps`` the market
        fee that finalize will take from the payment, ``free_stake`` the provider's unlocked stake in
        base units (None = not known; the bond check is skipped and claim will revert if short)."""
        if not 0 <= fee_bps <= BPS:
            raise ValueError(f"fee_bps must be in 0..{BPS}, got {fee_bps}")

        def no(code: RejectCode, reason: str, quote: Quote | None = None, p: dict | None = None) -> Decision:
            return Decision(False, code, reason, quote, p)

        pol, pr, tok = self.settings.policy, self.settings.pricing, self._tok
        workload = self._known.get(offer.workload)
        if workload is None:
            return no(RejectCode.WORKLOAD_DISABLED, f"workload 0x{offer.workload.hex()} is unknown to this node")
        if workload.name not in self._enabled:
            return no(RejectCode.WORKLOAD_DISABLED, f"workload {workload.name} is not enabled here "
                      f"(policy.workloads: {', '.join(sorted(self._enabled))})")
        if offer.provider != ZERO_ADDRESS and offer.provider.lower() != self.provider:
            return no(RejectCode.NOT_ADDRESSED, f"offer is reserved for provider {offer.provider}, "
                      f"not this node ({self._provider_shown})")
        requester = offer.requester.lower()
        if requester in self._deny:
            return no(RejectCode.REQUESTER_DENIED, f"requester {offer.requester} is on policy.deny_requesters")
        if self._allow and requester not in self._allow:
            return no(RejectCode.REQUESTER_NOT_ALLOWED, f"requester {offer.requester} is not among the "
                      f"{len(self._allow)} address(es) of policy.allow_requesters")
        try:
            checked = workload.validate_params(params)
        except ParamsError as e:
            return no(RejectCode.INVALID_PARAMS, f"invalid params for {workload.name}: {e.reason}")
        if (bad := self._check_input(offer)) is not None:
            return no(*bad, p=checked)

        bond = offer.providerBond
        if self._max_bond and bond > self._max_bond:
            return no(RejectCode.BOND_ABOVE_MAX, f"provider bond {tok(bond)} is above policy.max_bond "
                      f"{tok(self._max_bond)}", p=checked)
        if free_stake is not None and free_stake < bond:
            return no(RejectCode.BOND_NOT_COVERED, f"provider bond {tok(bond)} exceeds the free stake "
                      f"{tok(free_stake)}", p=checked)

        estimate = workload.estimate(checked)
        need = estimate.vram_bytes
        fitting = [d for d in self.devices if need is None or d.vram_bytes is None or need <= d.vram_bytes]
        if not fitting:
            if not self.devices:
                return no(RejectCode.NO_DEVICE, "no compute devices are available on this node", p=checked)
            have = max(self.devices, key=lambda d: d.vram_bytes or 0)
            return no(RejectCode.NO_DEVICE, f"{workload.name} needs {_bytes(need or 0)} of device memory; "
                      f"the largest usable here is {_bytes(have.vram_bytes or 0)} on {have.name}", p=checked)
        timed = sorted(((self._seconds(estimate, d), -self._speed(estimate, d), i, d)
                        for i, d in enumerate(fitting)), key=lambda t: t[:3])
        seconds, _, _, best = timed[0]
        fits = tuple(t[3].name for t in timed)

        net = offer.payment - offer.payment * fee_bps // BPS
        floor = _ceil_units(seconds, self._price)
        counted = self._kwh > 0 and bool(best.watts)
        power = _ceil_units(best.watts or 0, seconds, self._kwh, divisor=3_600_000) if counted else 0
        quote = Quote(best.name, seconds, floor, power, net, net / max(seconds, 1e-6), fits)
        paid = f"payment {tok(offer.payment)}" + (
            f" ({tok(net)} after the {fee_bps / 100:g}% market fee)" if fee_bps else "")
        if net < floor:
            return no(RejectCode.BELOW_PRICE_FLOOR, f"{paid} is below the price floor {tok(floor)} "
                      f"({_secs(seconds)} × {_tokens(self._price, self._decimals)} tokens/GPU-s on "
                      f"{best.name})", quote, checked)
        if net < power:
            return no(RejectCode.BELOW_POWER_COST, f"{paid} is below the power cost {tok(power)} "
                      f"({best.watts:g} W × {_secs(seconds)} = {(best.watts or 0) * seconds / 3.6e6:.4g} kWh × "
                      f"{pr.electricity_price_per_kwh} tokens/kWh + {pr.min_margin_pct:g}% margin)",
                      quote, checked)
        limit = self.settings.hardware.job_timeout_s
        if seconds > limit:
            return no(RejectCode.DEADLINE_INFEASIBLE, f"estimated {_secs(seconds)} on {best.name} exceeds "
                      f"hardware.job_timeout_s {_secs(limit)}", quote, checked)
        needed = seconds * (1 + pol.deadline_margin_pct / 100) + FIXED_OVERHEAD_S
        if offer.maxDuration < needed:
            return no(RejectCode.DEADLINE_INFEASIBLE, f"maxDuration {offer.maxDuration} s is shorter than "
                      f"the {_secs(seconds)} estimate on {best.name} + {pol.deadline_margin_pct:g}% margin + "
                      f"{FIXED_OVERHEAD_S} s overhead = {_secs(needed)}", quote, checked)
        if offer.expiry < now + CLAIM_LEAD_S:
            left = offer.expiry - now
            when = f"expired {-left} s ago" if left < 0 else f"expires in {left} s"
            return no(RejectCode.OFFER_EXPIRING, f"offer {when}; at least {CLAIM_LEAD_S} s are needed to "
                      "get the claim mined", quote, checked)
        return Decision(True, None, f"accept {workload.name} on {best.name}: {tok(net)} for about "
                        f"{_secs(seconds)} ({_tokens(int(quote.pay_per_second), self._decimals)} "
                        "tokens/s)", quote, checked)

    def _check_input(self, offer: JobOffer) -> tuple[RejectCode, str] | None:
        """Refuse inputs the fetcher would refuse anyway (same rules as node.compute.inputs), before a
        claim locks the bond; http(s) sizes are only known while downloading, so the fetcher caps those."""
        uri, has_hash, pol = offer.inputURI, offer.inputHash != bytes(32), self.settings.policy
        if not uri:
            return None if not has_hash else (RejectCode.INPUT_NOT_ALLOWED, "input hash given without a URI")
        if not has_hash:
            return RejectCode.INPUT_NOT_ALLOWED, "input URI given without an input hash"
        if any(ord(c) < 0x21 or ord(c) == 0x7F for c in uri):
            return RejectCode.INPUT_NOT_ALLOWED, "input URI contains spaces or control characters"
        scheme = uri.partition(":")[0].lower() if ":" in uri else ""
        allowed = ("data", "http", "https") + (("file",) if pol.allow_file_inputs else ())
        if scheme == "file" and not pol.allow_file_inputs:
            return RejectCode.INPUT_NOT_ALLOWED, "file: input URIs are disabled (policy.allow_file_inputs)"
        if scheme not in allowed:
            shown = repr(scheme[:20]) if scheme else "(none)"
            return RejectCode.INPUT_NOT_ALLOWED, f"input URI scheme {shown} is not allowed ({', '.join(allowed)})"
        if scheme == "data":
            size = data_uri_size(uri)
            if size is None:
                return RejectCode.INPUT_NOT_ALLOWED, "malformed data: URI (RFC 2397, base64 if ;base64)"
            if size > pol.max_input_bytes:
                return (RejectCode.INPUT_TOO_LARGE, f"data: input is {size:,} bytes ({_bytes(size)}), above "
                        f"policy.max_input_bytes {pol.max_input_bytes:,} ({_bytes(pol.max_input_bytes)})")
        return None

    @staticmethod
    def _speed(estimate: Estimate, device: DeviceProfile) -> float:
        """The throughput that matters for this job: int8 for integer work, float otherwise/unknown."""
        only_int = estimate.int_ops is not None and estimate.flops is None
        return device.int8_ops_per_s if only_int else device.float_flops_per_s

    def _seconds(self, estimate: Estimate, device: DeviceProfile) -> float:
        """ops / measured speed per kind of work; unknown work (or an unmeasured speed) counts as
        pricing.assumed_job_seconds; never below pricing.min_job_seconds."""
        pr = self.settings.pricing
        parts = [(estimate.int_ops, device.int8_ops_per_s), (estimate.flops, device.float_flops_per_s)]
        known = [(ops, speed) for ops, speed in parts if ops is not None]
        if not known or any(speed <= 0 or not math.isfinite(speed) for _, speed in known):
            return max(pr.min_job_seconds, pr.assumed_job_seconds)
        return max(pr.min_job_seconds, sum(ops / speed for ops, speed in known))


def device_profiles(attestation: dict, capacity: MachineCapacity, settings: Settings,
                    watts: Mapping[str, float] | None = None) -> list[DeviceProfile]:
    """Turn the bench attestation into the devices the policy prices on, in attestation order.

    Memory: a GPU ("cuda:N") gets its detected total × hardware.gpu_memory_fraction (the worker's own
    cap); a MIG-enabled GPU the smallest of its slices, since which slice runs the job is not known
    here; an undetected GPU None (unbounded: the worker still enforces its cap). The CPU gets
    hardware.cpu_worker_memory_mb MiB, the RLIMIT budget its worker really runs under, so a job that
    could never fit there is refused before the bond is locked. Devices the settings exclude
    (hardware.devices, hardware.allow_cpu) are left out. Raises ValueError on a malformed attestation.
    """
    hw, watts = settings.hardware, watts or {}
    wanted = set(hw.devices)
    devices = attestation.get("devices") if isinstance(attestation, dict) else None
    if not isinstance(devices, list):
        raise ValueError("bench attestation has no 'devices' list; rerun `gpunode bench`")
    out = []
    for i, entry in enumerate(devices):
        try:
            name = entry["device"]
            int8, flt = float(entry["int8_tops"]) * 1e12, float(entry["float_tflops"]) * 1e12
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"bench attestation devices[{i}] is malformed ({e!r}); rerun `gpunode bench`") from None
        if not isinstance(name, str):
            raise ValueError(f"bench attestation devices[{i}].device must be a string")
        if name == "cpu":
            if not hw.allow_cpu:
                continue
            vram: int | None = hw.cpu_worker_memory_mb * _MIB
        else:
            index = _cuda_index(name)
            gpu = next((g for g in capacity.gpus if g.index == index), None)
            if "all" not in wanted and (gpu is None or not {gpu.index, gpu.uuid} & wanted):
                continue  # an undetected GPU cannot be matched to the operator's list: leave it out
            vram = _gpu_memory(index, capacity, hw.gpu_memory_fraction)
        w = watts.get(name) or settings.pricing.device_watts
        out.append(DeviceProfile(name, vram, int8, flt, float(w) if w else None))
    return out


def _cuda_index(name: str) -> int | None:
    match = re.fullmatch(r"cuda:(\d+)", name)
    return int(match.group(1)) if match else None


def _gpu_memory(index: int | None, capacity: MachineCapacity, fraction: float) -> int | None:
    """The whole GPU's memory, else (MIG enabled) its smallest slice; None when not detected."""
    targets = [t for t in capacity.compute_devices() if t.kind != "cpu" and t.gpu_index == index]
    whole = [t.memory_mib for t in targets if t.kind == "gpu"]
    sizes = [m for m in (whole or [t.memory_mib for t in targets]) if m]
    return int(min(sizes) * _MIB * fraction) if index is not None and sizes else None
