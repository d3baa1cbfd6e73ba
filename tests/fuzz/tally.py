"""Counts of what the fuzzing tried and how the node answered, printed at the end of the run.

One process-wide tally (pytest-xdist workers each print their own share, or none when the controller owns
the terminal: the totals are for ``make fuzz``, which runs in one process)."""

from __future__ import annotations

from collections import Counter, defaultdict


class Tally:
    def __init__(self) -> None:
        self.tried: dict[str, Counter[str]] = defaultdict(Counter)  # path -> category -> offers sent
        self.rejected: dict[str, Counter[str]] = defaultdict(Counter)  # path -> code -> offers refused
        self.http: Counter[str] = Counter()  # "<kind> <status>" -> requests
        self.accepted: Counter[str] = Counter()  # path -> fuzz offers accepted (must stay 0)
        self.controls: Counter[str] = Counter()  # path -> valid offers sent on purpose (accepted)
        self.raw: dict[str, str] = {}  # broken-HTTP case -> what the node answered

    def offer(self, path: str, category: str, code: str) -> None:
        self.tried[path][category] += 1
        self.rejected[path][code] += 1

    def total_offers(self) -> int:
        return sum(sum(c.values()) for c in self.tried.values())

    def lines(self) -> list[str]:
        out = [f"fuzz offers tried: {self.total_offers()} (accepted from fuzz input: "
               f"{sum(self.accepted.values())}; valid controls accepted: {sum(self.controls.values())})"]
        for path in sorted(self.tried):
            tried = self.tried[path]
            out.append(f"  {path}: {sum(tried.values())} offers")
            out += [f"    tried    {cat:<36} {n:>7}" for cat, n in sorted(tried.items())]
            out += [f"    rejected {code:<36} {n:>7}" for code, n in self.rejected[path].most_common()]
        if self.http:
            out.append(f"  malformed HTTP: {sum(self.http.values())} requests")
            out += [f"    {kind:<45} {n:>7}" for kind, n in sorted(self.http.items())]
        if self.raw:
            out.append("  broken HTTP on a socket, case by case:")
            out += [f"    {name:<45} {answer}" for name, answer in sorted(self.raw.items())]
        return out


TALLY = Tally()
