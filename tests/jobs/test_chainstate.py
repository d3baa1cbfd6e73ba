"""What the journal records from a chain read: the implied_state table row by row, the guarantee that it only
ever proposes legal moves, multi-step catch-up through a real Journal, and getJob against the conftest anvil."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace

import pytest
from eth_account import Account
from eth_utils import keccak

from node.chain.offers import ZERO_ADDRESS, JobOffer, workload_id
from node.chain.rpc import RpcClient
from node.jobs.chainstate import ChainJobState, OnChainJob, apply_chain_state, implied_state, read_job
from node.jobs.journal import JobRecord, JobSource, Journal
from node.jobs.state import TERMINAL, JobState, is_legal
from tests.conftest import FEE_BPS, TOKEN

S, C = JobState, ChainJobState
ME = "0x" + "aa" * 20
OTHER = "0x" + "bb" * 20
REQUESTER = "0x" + "cc" * 20
ROOT = "0x" + "7e" * 32
JID = "0x" + "11" * 32
DUE = 1_000_000
BEFORE, AFTER = DUE - 10, DUE + 10

# The journal path from seen to each state (the fields each entry needs are added by `drive`).
_FORWARD = [S.VALIDATED, S.CLAIMED, S.FETCHING, S.RUNNING, S.COMMITTED, S.SUBMITTED]
PATHS: dict[JobState, list[JobState]] = {S.SEEN: []}
for _i, _s in enumerate(_FORWARD):
    PATHS[_s] = _FORWARD[:_i + 1]
PATHS |= {S.DISPUTED: [*_FORWARD, S.DISPUTED], S.FINALIZED: [*_FORWARD, S.FINALIZED],
          S.FAILED: [S.VALIDATED, S.CLAIMED, S.FAILED], S.EXPIRED: [S.EXPIRED], S.REJECTED: [S.REJECTED],
          S.PAID: [*_FORWARD, S.FINALIZED, S.PAID], S.SLASHED: [*_FORWARD, S.SLASHED]}


def drive(journal: Journal, job_id: str, target: JobState, *, deadline: int = DUE, root: str = ROOT,
          requester: str = REQUESTER, payment: int = 5 * TOKEN, bond: int = TOKEN) -> JobRecord:
    """Records a job as seen and walks it along a legal path to ``target`` (shared by the settler and
    watcher tests)."""
    journal.record_seen(job_id, requester=requester, provider=ZERO_ADDRESS, workload="matmul-int8/v1",
                        payment=payment, bond=bond, expiry=deadline, offer_json=json.dumps({"n": job_id}),
                        source=JobSource.CHAIN)
    rec = journal.get(job_id)
    for step in PATHS[target]:
        fields = {"deadline": deadline} if step is S.CLAIMED else {"result_root": root} if step is S.COMMITTED else {}
        rec = journal.transition(job_id, step, reason=f"test: to {step}", **fields)
    return rec


def record(state: JobState, *, root: str | None = ROOT) -> JobRecord:
    return JobRecord(JID, state, REQUESTER, ZERO_ADDRESS, "matmul-int8/v1", 5 * TOKEN, TOKEN, DUE, DUE, "{}",
                     JobSource.CHAIN, root, None, None, "", None, 0.0, 0.0)


def onchain(state: ChainJobState, provider: str = ME, *, root: str = ROOT, due: int = DUE) -> OnChainJob:
    return OnChainJob(state, REQUESTER, provider, due, FEE_BPS, 5 * TOKEN, TOKEN, bytes.fromhex(root[2:]))


OTHER_ROOT = "0x" + "99" * 32
# (journal state, chain state, chain provider, chain time, chain root) -> the implied state (None: no move)
TABLE = [
    # before our claim: the offer lapses, is cancelled or goes elsewhere; our own claim is recorded
    (S.SEEN, C.OPEN, ZERO_ADDRESS, BEFORE, ROOT, None),
    (S.VALIDATED, C.OPEN, ZERO_ADDRESS, BEFORE, ROOT, None),
    (S.VALIDATED, C.OPEN, ME, BEFORE, ROOT, None),  # addressed to us, not claimed yet
    (S.VALIDATED, C.OPEN, OTHER, BEFORE, ROOT, None),  # addressed to another: policy's business, not the chain's
    (S.VALIDATED, C.NONE, ZERO_ADDRESS, AFTER, ROOT, None),  # a direct offer is not on chain before its claim
    (S.SEEN, C.OPEN, ZERO_ADDRESS, DUE, ROOT, S.EXPIRED),  # claim() refuses at the expiry second itself
    (S.VALIDATED, C.OPEN, ZERO_ADDRESS, AFTER, ROOT, S.EXPIRED),
    (S.VALIDATED, C.CANCELLED, ZERO_ADDRESS, BEFORE, ROOT, S.EXPIRED),
    (S.SEEN, C.EXPIRED, ZERO_ADDRESS, AFTER, ROOT, S.EXPIRED),
    (S.VALIDATED, C.EXPIRED, ME, AFTER, ROOT, S.EXPIRED),  # our claim lapsed while the node was down
    (S.VALIDATED, C.CLAIMED, OTHER, BEFORE, ROOT, S.EXPIRED),
    (S.SEEN, C.FINALIZED, OTHER, AFTER, ROOT, S.EXPIRED),
    (S.VALIDATED, C.CLAIMED, ME, BEFORE, ROOT, S.CLAIMED),
    (S.VALIDATED, C.CLAIMED, ME, AFTER, ROOT, S.CLAIMED),  # recorded; the executor then finds it overdue
    (S.SEEN, C.CLAIMED, ME, BEFORE, ROOT, S.VALIDATED),  # next legal step toward claimed
    (S.VALIDATED, C.SUBMITTED, ME, BEFORE, ROOT, None),  # our result without our work: not invented
    (S.SEEN, C.FINALIZED, ME, AFTER, ROOT, None),
    # holding the claim, working
    (S.CLAIMED, C.CLAIMED, ME, BEFORE, ROOT, None),
    (S.RUNNING, C.CLAIMED, ME, AFTER, ROOT, None),  # overdue is the executor's call, not a chain fact
    (S.CLAIMED, C.EXPIRED, ME, AFTER, ROOT, S.EXPIRED),
    (S.FETCHING, C.EXPIRED, ME, AFTER, ROOT, S.EXPIRED),
    (S.RUNNING, C.CLAIMED, OTHER, BEFORE, ROOT, S.EXPIRED),  # our claim was reorganised away, someone else's won
    (S.CLAIMED, C.CANCELLED, ZERO_ADDRESS, BEFORE, ROOT, S.EXPIRED),
    (S.FETCHING, C.OPEN, ZERO_ADDRESS, BEFORE, ROOT, None),  # claim reorganised away: the tx manager resends it
    (S.RUNNING, C.SUBMITTED, ME, BEFORE, ROOT, None),
    (S.COMMITTED, C.CLAIMED, ME, BEFORE, ROOT, None),  # submit still in flight
    (S.COMMITTED, C.SUBMITTED, ME, BEFORE, ROOT, S.SUBMITTED),
    (S.COMMITTED, C.SUBMITTED, ME, BEFORE, OTHER_ROOT, None),  # someone else's root under our key: a human's case
    (S.COMMITTED, C.DISPUTED, ME, BEFORE, ROOT, S.SUBMITTED),  # next legal step toward disputed
    (S.COMMITTED, C.FINALIZED, ME, AFTER, ROOT, S.SUBMITTED),  # next legal step toward finalized
    (S.COMMITTED, C.SLASHED, ME, AFTER, ROOT, S.SUBMITTED),
    (S.COMMITTED, C.EXPIRED, ME, AFTER, ROOT, S.EXPIRED),
    (S.COMMITTED, C.SUBMITTED, OTHER, BEFORE, ROOT, S.EXPIRED),
    # our result is on chain
    (S.SUBMITTED, C.SUBMITTED, ME, BEFORE, ROOT, None),
    (S.SUBMITTED, C.SUBMITTED, ME, AFTER, ROOT, None),  # due: the settler finalizes; the read records nothing
    (S.SUBMITTED, C.DISPUTED, ME, BEFORE, ROOT, S.DISPUTED),
    (S.SUBMITTED, C.CHALLENGED, ME, BEFORE, ROOT, S.DISPUTED),
    (S.SUBMITTED, C.FINALIZED, ME, AFTER, ROOT, S.FINALIZED),
    (S.SUBMITTED, C.SLASHED, ME, AFTER, ROOT, S.SLASHED),
    (S.SUBMITTED, C.CLAIMED, ME, BEFORE, ROOT, None),  # our submit was reorganised away; it is resent
    (S.SUBMITTED, C.FINALIZED, OTHER, AFTER, ROOT, None),  # not ours: never credit it to us
    (S.DISPUTED, C.DISPUTED, ME, BEFORE, ROOT, None),
    (S.DISPUTED, C.CHALLENGED, ME, BEFORE, ROOT, None),
    (S.DISPUTED, C.SUBMITTED, ME, BEFORE, ROOT, S.SUBMITTED),
    (S.DISPUTED, C.FINALIZED, ME, AFTER, ROOT, S.FINALIZED),
    (S.DISPUTED, C.SLASHED, ME, AFTER, ROOT, S.SLASHED),
    (S.FINALIZED, C.FINALIZED, ME, AFTER, ROOT, None),  # paid is recorded by the withdraw, not by a read
    (S.FINALIZED, C.SUBMITTED, ME, AFTER, ROOT, S.SUBMITTED),  # a reorg removed our finalizeMany
    (S.FINALIZED, C.SUBMITTED, ME, BEFORE, ROOT, S.SUBMITTED),  # ... and the re-mined blocks are earlier
    (S.FINALIZED, C.DISPUTED, ME, BEFORE, ROOT, S.DISPUTED),  # a reorg removed the ruling
    (S.FINALIZED, C.CHALLENGED, ME, BEFORE, ROOT, S.DISPUTED),
    (S.FINALIZED, C.SUBMITTED, OTHER, AFTER, ROOT, None),  # not ours: a human's case
    # our work failed; the claim waits for expiry
    (S.FAILED, C.CLAIMED, ME, BEFORE, ROOT, None),
    (S.FAILED, C.CLAIMED, ME, AFTER, ROOT, None),  # past the deadline: the settler sends expire
    (S.FAILED, C.EXPIRED, ME, AFTER, ROOT, S.EXPIRED),
    (S.FAILED, C.CLAIMED, OTHER, BEFORE, ROOT, S.EXPIRED),
    (S.FAILED, C.CANCELLED, ZERO_ADDRESS, BEFORE, ROOT, S.EXPIRED),
    (S.FAILED, C.OPEN, ZERO_ADDRESS, BEFORE, ROOT, None),
    (S.FAILED, C.SUBMITTED, ME, BEFORE, ROOT, None),  # a submit landed after we gave up: a human's case
    # terminal states never move
    (S.PAID, C.FINALIZED, ME, AFTER, ROOT, None),
    (S.EXPIRED, C.CLAIMED, ME, BEFORE, ROOT, None),
    (S.REJECTED, C.EXPIRED, ZERO_ADDRESS, AFTER, ROOT, None),
    (S.SLASHED, C.FINALIZED, ME, AFTER, ROOT, None),
]


def _row_id(row: tuple) -> str:
    who = {ME: "me", OTHER: "other"}.get(row[2], "zero")
    return (f"{row[0]}-{row[1].name.lower()}-{who}-{'after' if row[3] >= DUE else 'before'}"
            f"{'-badroot' if row[4] != ROOT else ''}")


@pytest.mark.parametrize(("state", "chain_state", "provider", "now", "root", "expected"), TABLE,
                         ids=[_row_id(r) for r in TABLE])
def test_implied_state_table(state, chain_state, provider, now, root, expected):
    got = implied_state(record(state), onchain(chain_state, provider, root=root), ME, now)
    if expected is None:
        assert got is None
    else:
        assert got is not None and got[0] is expected, got
        assert got[1].strip()  # every move says why


def test_my_address_matches_in_any_case():
    got = implied_state(record(S.VALIDATED), onchain(C.CLAIMED, ME.upper().replace("0X", "0x")), ME.lower(), BEFORE)
    assert got is not None and got[0] is S.CLAIMED


def test_only_legal_moves_for_every_combination():
    """Every journal state against every chain state, provider, time and root: never an illegal move."""
    seen_targets = set()
    for state, cs, who, now, root, mine_root in itertools.product(
            JobState, ChainJobState, (ME, OTHER, ZERO_ADDRESS), (BEFORE, DUE, AFTER), (ROOT, OTHER_ROOT),
            (ROOT, None)):
        got = implied_state(record(state, root=mine_root), onchain(cs, who, root=root), ME, now)
        if got is not None:
            assert is_legal(state, got[0]), (state, cs, got)
            assert state not in TERMINAL
            seen_targets.add(got[0])
    # the table reaches every state a chain read can establish
    assert seen_targets == {S.VALIDATED, S.CLAIMED, S.SUBMITTED, S.DISPUTED, S.FINALIZED, S.SLASHED, S.EXPIRED}


def test_net_payment_is_payment_less_fee():
    job = replace(onchain(C.FINALIZED), payment=10_001, fee_bps=250)
    assert job.net_payment == 10_001 - 10_001 * 250 // 10_000


# -- apply_chain_state through a real journal -------------------------------------------------------------


def test_catch_up_takes_every_legal_step(journal):
    """A node that crashed after submitting comes back after someone finalized: committed -> submitted ->
    finalized, two audit rows."""
    rec = drive(journal, JID, S.COMMITTED)
    moved = apply_chain_state(journal, rec, onchain(C.FINALIZED), ME, AFTER)
    assert moved is not None and moved.state is S.FINALIZED
    assert [t.to_state for t in journal.history(JID)][-2:] == [S.SUBMITTED, S.FINALIZED]
    assert journal.get(JID).code == "chain_finalized"


def test_claim_found_on_chain_records_the_chain_deadline(journal):
    rec = drive(journal, JID, S.SEEN)
    moved = apply_chain_state(journal, rec, onchain(C.CLAIMED, due=DUE + 77), ME, BEFORE)
    assert moved.state is S.CLAIMED and moved.deadline == DUE + 77
    assert [t.to_state for t in journal.history(JID)] == [S.SEEN, S.VALIDATED, S.CLAIMED]


def test_nothing_implied_moves_nothing(journal):
    rec = drive(journal, JID, S.SUBMITTED)
    assert apply_chain_state(journal, rec, onchain(C.SUBMITTED), ME, BEFORE) is None
    assert journal.get(JID).state is S.SUBMITTED and len(journal.history(JID)) == 7


def test_a_stale_read_loses_to_the_move_already_made(journal):
    """The watcher recorded the dispute while the settler was reading: the settler's older view moves nothing."""
    stale = drive(journal, JID, S.SUBMITTED)
    journal.transition(JID, S.DISPUTED, reason="event: disputed")
    assert apply_chain_state(journal, stale, onchain(C.FINALIZED), ME, AFTER) is None
    assert journal.get(JID).state is S.DISPUTED


# -- getJob on the conftest chain --------------------------------------------------------------------------


async def test_read_job_from_the_chain(chain):
    requester = chain.keys[1]
    now = chain.w3.eth.get_block("latest")["timestamp"]
    offer = JobOffer(requester=chain.addr(1), provider=ZERO_ADDRESS, workload=workload_id("matmul-int8/v1"),
                     paramsHash=keccak(b"p"), inputHash=keccak(b"i"), inputURI="https://x.example/in",
                     payment=3 * TOKEN, providerBond=TOKEN // 2, maxDuration=600, expiry=now + 900, nonce=4242)
    chain.proto.approve(requester, chain.deployment.market, offer.payment)
    chain.proto.post(requester, offer, b"p", chain.proto.sign(requester, offer))
    job_id = chain.proto.job_id(offer)
    async with RpcClient([chain.anvil.url], timeout=5) as rpc:
        job = await read_job(rpc, chain.deployment.market, job_id)
        unknown = await read_job(rpc, chain.deployment.market, "0x" + job_id.hex())
        missing = await read_job(rpc, chain.deployment.market, keccak(b"no such job"))
    assert job == unknown  # bytes or hex id alike
    assert job == OnChainJob(C.OPEN, chain.addr(1), ZERO_ADDRESS, now + 900, FEE_BPS, 3 * TOKEN, TOKEN // 2,
                             b"\x00" * 32)
    assert missing.state is C.NONE and missing.requester == ZERO_ADDRESS and missing.payment == 0
    assert Account.from_key(requester).address == job.requester
