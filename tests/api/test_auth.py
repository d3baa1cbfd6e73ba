"""The signed-request text and helpers, without a server."""

from __future__ import annotations

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct

from node.api.auth import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    AuthError,
    ReplayCache,
    parse_request,
    recover_signer,
    result_request_message,
    sign_result_request,
)
from tests.api.fakes import REQUESTER

JOB = "0x" + "Ab" * 32
PROVIDER = "0x" + "ab" * 20


def test_message_text_is_exact() -> None:
    assert result_request_message(JOB, PROVIDER, 31337, 1_700_000_000) == (
        "gpunode result request\nchain: 31337\nprovider: 0xABaBaBaBABabABabAbAbABAbABabababaBaBABaB\n"
        f"job: 0x{'ab' * 32}\ntime: 1700000000")
    with pytest.raises(ValueError, match="64 hex"):
        result_request_message("0x1234", PROVIDER, 1, 1)


def test_sign_accepts_keys_and_accounts_and_round_trips() -> None:
    key = "0x" + "11" * 32
    a = sign_result_request(key, JOB, PROVIDER, 5, 1_700_000_000)
    assert a == sign_result_request(bytes.fromhex("11" * 32), JOB, PROVIDER, 5, 1_700_000_000)
    assert a == sign_result_request(REQUESTER, JOB, PROVIDER, 5, 1_700_000_000)
    assert a[TIMESTAMP_HEADER] == "1700000000" and len(a[SIGNATURE_HEADER]) == 2 + 130
    msg = encode_defunct(text=result_request_message(JOB, PROVIDER, 5, 1_700_000_000))
    assert Account.recover_message(msg, signature=a[SIGNATURE_HEADER]) == REQUESTER.address
    req = parse_request(a, now=1_700_000_000, window_s=10)
    assert recover_signer(req, JOB.lower(), PROVIDER, 5) == REQUESTER.address


def test_parse_request_window_is_inclusive() -> None:
    h = sign_result_request(REQUESTER, JOB, PROVIDER, 5, 1000)
    assert parse_request(h, now=1010, window_s=10).timestamp == 1000
    with pytest.raises(AuthError) as err:
        parse_request(h, now=1010.5, window_s=10)
    assert err.value.status == 401 and err.value.code == "stale_timestamp"


def test_replay_cache_forgets_after_the_window() -> None:
    now = [1000.0]
    cache = ReplayCache(10, lambda: now[0])
    req = parse_request(sign_result_request(REQUESTER, JOB, PROVIDER, 5, 1000), now=1000, window_s=10)
    other = parse_request(sign_result_request(REQUESTER, JOB, PROVIDER, 5, 1001), now=1000, window_s=10)
    assert cache.use(req) and not cache.use(req)
    assert cache.use(other) and len(cache) == 2
    now[0] = 1010.0
    assert not cache.use(req)  # still inside its window
    now[0] = 1010.5
    assert len(cache) == 1  # req's timestamp left the window; parse_request would refuse it now anyway
    now[0] = 1011.5
    assert len(cache) == 0
