"""The two fuzz profiles and the example budget of each test.

"ci" (the default, what ``make test`` runs): derandomized, so every run tries the same examples and a failure
in CI reproduces on any machine; sized so the whole directory takes about a minute alone. "long"
(``GPUNODE_FUZZ=long``, what ``make fuzz`` runs): a fresh seed each run (printed, and taken from
``GPUNODE_FUZZ_SEED`` when set, to replay a run) and budgets that add up to more than 10,000 offers.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, Verbosity, seed, settings

LONG = os.environ.get("GPUNODE_FUZZ", "").strip().lower() == "long"
PROFILE = "long" if LONG else "ci"
SEED = int(os.environ.get("GPUNODE_FUZZ_SEED") or random.SystemRandom().randrange(2**32)) if LONG else 0

_COMMON: dict[str, Any] = dict(deadline=None, database=None, print_blob=True, verbosity=Verbosity.normal,
                               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                      HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture])
settings.register_profile("ci", derandomize=True, max_examples=50, **_COMMON)
settings.register_profile("long", derandomize=False, max_examples=1000, **_COMMON)


def fuzz(ci: int, long: int) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorates a @given test with its example budget for the active profile (and the run's seed in long)."""

    def wrap(test: Callable[..., Any]) -> Callable[..., Any]:
        # Applied per test rather than loaded globally, so the rest of the suite keeps its own defaults.
        test = settings(settings.get_profile(PROFILE), max_examples=long if LONG else ci)(test)
        return seed(SEED)(test) if LONG else test

    return wrap
