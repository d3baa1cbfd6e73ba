"""The benchmark report on real measurements at quick sizes: every part runs (compute, offers, commitment and
a real daemon on anvil), each row is flagged met or **missed** exactly as its value stands against its goal,
the node's event-to-claim histogram saw one figure per claimed job, and the table is spliced into a doc
without touching the hand-written sections. Figures are printed, never asserted: the machine decides them."""

from __future__ import annotations

import dataclasses

import pytest

from bench import report
from bench.report_parts import BEGIN, END, Goal, Row, render, splice


@pytest.fixture(scope="module")
def result():
    res = report.run(report.PARTS, quick=True, log=print)
    print(render(res))
    return res


def test_every_part_measured_and_flagged_by_its_value(result):
    rows = result["rows"]
    assert not [r for r in rows if r.error], [r.measured for r in rows if r.error]
    figures = " ".join(r.figure for r in rows)
    for name in ("raw torch", "fixed per-job overhead", "offers fully verified", "commitment", "event-to-claim, chain",
                 "gas per job, chain", "gas per job, direct", "idle node memory"):
        assert name in figures, name
    judged = [r for r in rows if r.goal is not None and r.judged]
    assert len(judged) >= 7
    for r in judged:
        assert r.value is not None, r.figure
        assert r.status.startswith("met" if r.goal.met(r.value) else "**missed**"), (r.figure, r.value, r.status)
        # the same row with its value pushed across the threshold flips
        worse = r.goal.threshold * (2 if r.goal.op == "<=" else 0.5) + (1 if r.goal.op == "<=" else 0)
        better = r.goal.threshold * (0.5 if r.goal.op == "<=" else 2)
        assert dataclasses.replace(r, value=worse).status.startswith("**missed**")
        assert dataclasses.replace(r, value=better).status.startswith("met")


def test_node_figures_come_from_the_daemon(result):
    raw = result["raw"]
    lat, gas, mem = raw["claim_latency"], raw["gas"], raw["idle_memory"]
    size = report.SIZES["node"][1]
    # one event-to-claim figure per claimed job, in the node's log and in its histogram
    assert lat["histogram_counts"] == {"chain": size["chain"], "direct": size["direct"]}
    assert lat["chain"]["n"] == size["chain"] and lat["direct"]["n"] == size["direct"]
    assert lat["chain"]["missing"] == lat["direct"]["missing"] == 0
    assert all(v > 0 for v in lat["chain"]["values_ms"] + lat["direct"]["values_ms"])
    # every protocol step has receipts, and each job's gas is at least its own transactions
    assert gas["post"]["n"] == gas["claim"]["n"] == size["chain"]
    assert gas["claimSigned"]["n"] == size["direct"]
    assert gas["submit"]["n"] == size["chain"] + size["direct"]
    assert gas["finalizeMany"]["jobs"] == size["chain"] + size["direct"] and gas["withdraw"]["txs"] >= 1
    assert gas["job_chain"]["min"] > gas["post"]["min"] + gas["claim"]["min"] + gas["submit"]["min"]
    assert gas["job_direct"]["min"] > gas["claimSigned"]["min"] + gas["submit"]["min"]
    # warm: the node and its worker were sampled, the tree holding more than the node alone; parked: the
    # worker is gone (only the resource tracker may remain) and the tree holds less than it did warm
    warm, parked = mem["warm"], mem["parked"]
    assert warm["processes"] >= 2 and warm["tree_pss_mb_max"] > warm["node_pss_mb_max"] > 0
    assert "multiprocessing.spawn" in warm["descendants"] and "multiprocessing.spawn" not in parked["descendants"]
    assert parked["tree_pss_mb_max"] < warm["tree_pss_mb_max"]


def test_render_records_the_machine_and_splices_between_markers(result):
    block = render(result)
    m = result["machine"]
    for text in (m["cpu"], m["python"], m["torch"], m["web3"], "quick sizes", "| figure | measured | goal | status |"):
        assert text in block
    assert block.startswith(BEGIN) and block.endswith(END)
    for r in result["rows"]:
        assert r.status.replace("|", "\\|") in block
    doc = "# Benchmarks\n\nIntro.\n\n## GPU\n\nHand-written.\n"
    once = splice(doc, block)
    assert once.index(BEGIN) < once.index("## GPU") and once.endswith("## GPU\n\nHand-written.\n")
    other = render({**result, "rows": result["rows"][:1]})
    twice = splice(once, other)
    assert twice.count(BEGIN) == 1 and twice.count(END) == 1 and other in twice and block not in twice
    assert twice.replace(other, "X") == once.replace(block, "X")  # only the block changed


def test_flags_without_a_value_or_goal():
    goal = Goal("<=", 100, "≤ 100")
    assert Row("f", 100, "100", goal, "cmd").status == "met"  # at the goal is met
    assert Row("f", 100.1, "100.1", goal, "cmd").status == "**missed**"
    assert Row("f", None, "none", goal, "cmd").status.startswith("**missed**")
    assert Row("f", 1, "1", None, "cmd").status == "—"
    assert Row("f", 900, "900", goal, "cmd", judged=False, note="n/a").status == "n/a"
    assert Row("f", None, "boom", None, "cmd", error=True).status == "**error**"
    with pytest.raises(ValueError):
        Goal("<", 1, "").met(0)
