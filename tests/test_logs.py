from __future__ import annotations

import io
import json
import logging
import sys
from datetime import datetime

import pytest

from node.logs import job_log, setup_logging, short_job
from tests.support.logging_state import restore_root_logging

JOB = "0x" + "1a2b3c4d5e6f" + "00" * 26


restore_logging = pytest.fixture(autouse=True)(restore_root_logging)  # setup_logging is process-wide


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_json_lines_parse_and_carry_the_job_and_extra_fields():
    out = io.StringIO()
    setup_logging("info", json_lines=True, stream=out)
    log = job_log(logging.getLogger("gpunode.test"), JOB)
    log.info("claimed with bond %d", 5, extra={"tx_hash": "0x" + "ee" * 32, "device": "cuda:0"})
    log.debug("below the level: not written")
    logging.getLogger("gpunode.other").warning("no job here", extra={"code": "below_price_floor", "raw": b"\x01\x02"})
    try:
        raise ValueError("bad params")
    except ValueError:
        log.exception("job failed")
    first, second, third = (json.loads(line) for line in lines(out))  # exactly three lines, each JSON

    assert first["msg"] == "claimed with bond 5" and first["level"] == "info" and first["logger"] == "gpunode.test"
    assert first["job_id"] == JOB and first["tx_hash"] == "0x" + "ee" * 32 and first["device"] == "cuda:0"
    assert first["ts"].endswith("+00:00") and datetime.fromisoformat(first["ts"]).tzinfo is not None  # ISO, UTC
    assert "job_id" not in second and second["code"] == "below_price_floor" and second["raw"] == "0x0102"
    assert third["job_id"] == JOB and third["level"] == "error"
    assert "ValueError: bad params" in third["exc"] and "Traceback" in third["exc"]


def test_an_extra_field_cannot_overwrite_the_fixed_keys():
    out = io.StringIO()
    setup_logging("info", json_lines=True, stream=out)
    logging.getLogger("gpunode.test").info("real", extra={"ts": "forged", "level": "forged"})
    [record] = [json.loads(line) for line in lines(out)]
    assert record["msg"] == "real" and record["level"] == "info" and record["ts"] != "forged"


def test_human_lines_show_a_short_job_id_and_fields_on_one_line():
    out = io.StringIO()
    setup_logging("debug", json_lines=False, stream=out)
    log = job_log(logging.getLogger("gpunode.jobs"), bytes.fromhex(JOB[2:]), device="cpu")
    log.debug("fetching input", extra={"tx_hash": "0xabc"})
    [line] = lines(out)
    assert "DEBUG" in line and "gpunode.jobs: fetching input" in line
    assert "job=1a2b3c4d5e " in line and JOB not in line  # 10 hex digits, not the whole id
    assert "device=cpu" in line and "tx_hash=0xabc" in line
    assert short_job(JOB) == short_job(JOB[2:]) == short_job(bytes.fromhex(JOB[2:])) == "1a2b3c4d5e"


def test_setup_twice_replaces_its_handler_instead_of_doubling_lines():
    first, second = io.StringIO(), io.StringIO()
    setup_logging("info", stream=first)
    setup_logging("warning", json_lines=True, stream=second)
    ours = [h for h in logging.getLogger().handlers if getattr(h, "_gpunode_handler", False)]
    assert len(ours) == 1
    logging.getLogger("gpunode.test").warning("once")
    logging.getLogger("gpunode.test").info("filtered by the new level")
    assert first.getvalue() == ""
    assert [json.loads(line)["msg"] for line in lines(second)] == ["once"]


def test_default_stream_follows_the_current_stderr(capsys):
    setup_logging("info")
    capsys.readouterr()
    logging.getLogger("gpunode.test").info("to whatever stderr is now")
    assert "to whatever stderr is now" in capsys.readouterr().err
    assert sys.stderr is not sys.__stderr__  # the capture replaced it after setup, and the line still arrived


def test_chatty_libraries_log_warnings_only_even_when_debugging():
    setup_logging("info", stream=io.StringIO())
    assert logging.getLogger("web3").getEffectiveLevel() == logging.WARNING
    setup_logging("debug", stream=io.StringIO())
    assert logging.getLogger("web3").getEffectiveLevel() == logging.WARNING


def test_bad_level_is_a_clear_error():
    with pytest.raises(ValueError, match="log level must be one of debug, info, warning, error, got 'loud'"):
        setup_logging("loud")
