"""A small load run (bench.load) against a real node on anvil: 60 offers posted on chain at once while direct
offers arrive at 20/s for 3 s, plus resends, concurrent copies and a replay of both kinds.

Asserts the behaviour, never the timings (those are printed): every /healthz the separate probe sent was
answered, and no offer was processed twice (one journal row and one decision per job id, offers_seen equal to
the distinct offers, concurrent copies counted once without a 5xx, replays counting nothing, at most one
JobClaimed per job and only for the acceptable offers, which ran). The full size is ``make load``.
"""

from __future__ import annotations

from bench.load import Config, run
from tests.e2e.nodenet import shared_bench


def test_small_load_run_answers_every_probe_and_processes_each_offer_once(tmp_path, tmp_path_factory):
    result = run(Config(onchain=60, rate=20, seconds=3, accept=1, races=4, seed=8,
                        bench=shared_bench(tmp_path_factory), workdir=tmp_path))
    print("\n" + result.markdown())  # the figures, for the log (seed in the first line)
    failed = {name: detail for name, (ok, detail) in result.checks.items() if not ok}
    assert not failed, f"seed {result.config.seed}: {failed}"
    assert result.checks.keys() >= {
        "every /healthz answered", "one journal row per offer", "no job entered a state twice",
        "offers_seen == distinct offers", "concurrent duplicates counted once",
        "<= 1 JobClaimed per job, only acceptable ones"}
