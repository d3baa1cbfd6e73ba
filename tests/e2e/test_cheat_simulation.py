"""The cheat simulation's short form (bench/cheat_simulation.py): on its own anvil with the real verifier and
a 2-of-3 MediatorSet, every cheat on matmul-int8 and torch-export is caught and slashed through the path
meant for it, and no honest job is slashed, even when its results are challenged, audited or disputed."""

from __future__ import annotations

import pytest

from bench.cheat_simulation import KINDS, render, run

pytestmark = pytest.mark.timeout(600)  # about 2 min on an idle 2-core machine; generous for a loaded one


@pytest.fixture(scope="module")
def summary(tmp_path_factory):
    # one round of each: the honest int8 result is also challenged at a random element and audited, the
    # honest float result disputed by the requester (the mediators must rule for the provider)
    return run(1, 1, seed=7, root=tmp_path_factory.mktemp("cheatsim"))


def rows(summary, workload):
    return {r["provider"]: r for r in summary["rows"] if r["workload"] == workload}


def test_every_cheat_is_caught_and_slashed(summary):
    print("\n" + render(summary))
    assert not summary["errors"], summary["errors"]
    for workload in ("matmul-int8", "torch-export"):
        table = rows(summary, workload)
        assert set(table) == set(KINDS)
        for kind in KINDS[1:]:
            r = table[kind]
            assert r["detected"] == r["slashed"] == r["trials"] >= 1, (workload, r)
    assert summary["all_cheats_slashed"]


def test_int8_cheats_take_the_path_meant_for_them(summary):
    table = rows(summary, "matmul-int8")
    for kind in ("one_element", "random_bytes", "reuse_old"):
        assert set(table[kind]["paths"]) == {"challenge"}, table[kind]
    assert set(table["serve_other"]["paths"]) == {"audit+reveal"}  # its own reveal proves the fraud
    assert set(table["withhold"]["paths"]) == {"audit+timeout"}
    gas = summary["gas"]["matmul-int8"]
    for name in ("challenge", "audit", "reveal", "revealTimeout", "challenge(cleared)"):
        assert gas[name]["n"] >= 1 and 0 < gas[name]["max"] < 2_000_000, (name, gas)


def test_honest_providers_are_never_slashed(summary):
    assert summary["no_false_positives"]
    int8 = rows(summary, "matmul-int8")["honest"]
    assert int8["slashed"] == int8["false_positives"] == 0
    assert int8["honest_checks_cleared"] == 2  # one forced challenge, one audit answered by the node's Revealer
    float_honest = rows(summary, "torch-export")["honest"]
    assert float_honest["slashed"] == float_honest["false_positives"] == 0
    assert float_honest["honest_checks_cleared"] == 1  # the griefing dispute went the provider's way
    assert "resolve" in summary["gas"]["torch-export"]
