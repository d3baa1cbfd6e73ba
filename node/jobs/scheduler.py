"""Device slots and the choice of what to claim next.

One slot per device: a job holds its device's slot from just before its claim is sent until its result is
committed (or its work ends). The node claims only into a free slot, so it never holds more claims than it
can run at once; a claimed job never waits behind another claim for its device. The submit, the challenge
window and the payout need no device, so they do not hold a slot.

Among candidates the best pay per GPU-second goes first; ties go to the offer that expires sooner, since
the later one can still be taken next time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from node.jobs.policy import Quote


@dataclass(frozen=True)
class Candidate:
    job_id: str
    quote: Quote
    bond: int
    expiry: int


class Slots:
    def __init__(self, devices: Sequence[str]) -> None:
        self._holder: dict[str, str | None] = dict.fromkeys(devices)

    @property
    def devices(self) -> tuple[str, ...]:
        return tuple(self._holder)

    def holder(self, device: str) -> str | None:
        return self._holder.get(device)

    def device_of(self, job_id: str) -> str | None:
        return next((d for d, j in self._holder.items() if j == job_id), None)

    def free(self, usable: Callable[[str], bool] = lambda device: True) -> list[str]:
        return [d for d, j in self._holder.items() if j is None and usable(d)]

    def reserve(self, device: str, job_id: str) -> bool:
        """Takes the slot for the job; False if the device is unknown or taken by another job."""
        if device not in self._holder:
            return False
        if self._holder[device] not in (None, job_id):
            return False
        if self.device_of(job_id) not in (None, device):
            return False
        self._holder[device] = job_id
        return True

    def release(self, job_id: str) -> None:
        for d, j in self._holder.items():
            if j == job_id:
                self._holder[d] = None

    def busy(self) -> dict[str, str | None]:
        return dict(self._holder)


def rank(candidates: Iterable[Candidate]) -> list[Candidate]:
    return sorted(candidates, key=lambda c: (-c.quote.pay_per_second, c.expiry, c.job_id))


def assign(candidates: Iterable[Candidate], free_devices: Sequence[str], free_stake: int | None
           ) -> list[tuple[Candidate, str]]:
    """Best-paying candidates first, each into the first free device it fits (its quote lists the devices in
    order of preference), while the free stake covers their bonds. A candidate that does not fit now stays a
    candidate: an idle device or freed stake may take it later."""
    free = list(free_devices)
    stake = free_stake
    chosen: list[tuple[Candidate, str]] = []
    for c in rank(candidates):
        if not free:
            break
        if stake is not None and c.bond > stake:
            continue
        device = next((d for d in c.quote.fits if d in free), None)
        if device is None:
            continue
        free.remove(device)
        if stake is not None:
            stake -= c.bond
        chosen.append((c, device))
    return chosen
