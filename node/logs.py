"""Log output for the node: one human-readable line per event on a terminal, or one JSON object per line for
log shippers (``node.log_json``).

A node runs unattended for weeks, so the questions asked of its logs are "what happened to job X" and "which
transaction was that": structured fields (``job_id``, ``tx_hash``, ``device``, ``code``, ...) travel as
``extra=`` on the record, become keys of the JSON object, and show as ``key=value`` on the human line, where
the job id is cut to its first 10 hex digits so lines stay readable and still greppable.

``setup_logging`` may be called more than once (the CLI sets up logging before the service does, tests call
it repeatedly): it replaces the handler it installed before instead of adding another, so no line is
ever printed twice. Nothing here knows about secrets; the modules that hold them never pass them to a log
call (see node/chain/keys.py).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping, MutableMapping
from datetime import UTC, datetime
from typing import IO, Any

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}

# Attributes every LogRecord has; anything else on a record came from `extra=` (or an adapter).
_STANDARD = frozenset(vars(logging.LogRecord("x", logging.INFO, "x", 0, "", None, None))) | {"message", "asctime"}
_MARK = "_gpunode_handler"  # set on the handler we install, so a second setup finds and replaces it
# Libraries that narrate every request at INFO/DEBUG; the node's own lines are what an operator reads.
_CHATTY = ("web3", "urllib3", "websockets")


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


def short_job(job_id: Any) -> str:
    """First 10 hex digits of a job id (str with or without 0x, or bytes): enough to tell jobs apart."""
    text = job_id.hex() if isinstance(job_id, bytes | bytearray) else str(job_id)
    return (text[2:] if text[:2].lower() == "0x" else text)[:10]


def _json_value(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return "0x" + bytes(value).hex()
    return str(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts (ISO 8601 UTC), level, logger, msg, the extra fields, and exc/stack."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in _extras(record).items():
            out.setdefault(key, value)  # an extra may not overwrite the four fixed keys
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = record.stack_info
        return json.dumps(out, default=_json_value, ensure_ascii=False)


class HumanFormatter(logging.Formatter):
    """``2025-01-31 12:00:00 INFO  node.jobs: claimed job=1a2b3c4d5e tx_hash=0x...`` (local time)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)  # includes the traceback lines when there is exc_info
        head, sep, tail = line.partition("\n")
        fields = []
        for key, value in _extras(record).items():
            if key == "job_id":
                fields.append(f"job={short_job(value)}")
            else:
                fields.append(f"{key}={_json_value(value) if isinstance(value, bytes | bytearray) else value}")
        if fields:
            head = f"{head} {' '.join(fields)}"
        return head + sep + tail


class _CurrentStderr:
    """Writes to whatever sys.stderr is at the time of each write, so a handler set up once keeps working
    when stderr is replaced later (pytest's capture, a daemon redirecting its output)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def setup_logging(level: str = "info", json_lines: bool = False, stream: IO[str] | None = None) -> logging.Handler:
    """Route every logger through one handler on the root logger; calling again replaces it (idempotent).

    `level` is one of LEVELS ("debug", "info", "warning", "error"); `stream` defaults to (the current)
    stderr, so command output on stdout stays machine-readable.
    """
    try:
        numeric = LEVELS[level.lower()]
    except (KeyError, AttributeError):
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, got {level!r}") from None
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _MARK, False)]:
        root.removeHandler(old)
        old.close()
    handler = logging.StreamHandler(stream if stream is not None else _CurrentStderr())
    handler.setFormatter(JsonFormatter() if json_lines else HumanFormatter())
    setattr(handler, _MARK, True)
    root.addHandler(handler)
    root.setLevel(numeric)
    for name in _CHATTY:
        logging.getLogger(name).setLevel(max(numeric, logging.WARNING))
    logging.captureWarnings(True)
    return handler


class JobLogger(logging.LoggerAdapter):
    """Adds ``job_id`` to every record and keeps any ``extra=`` the call passes (LoggerAdapter on Python
    3.11/3.12 would drop it)."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        kwargs["extra"] = {**(self.extra or {}), **(kwargs.get("extra") or {})}
        return msg, kwargs


def job_log(logger: logging.Logger | logging.LoggerAdapter, job_id: str | bytes,
            **fields: Any) -> JobLogger:
    """A logger whose records all carry this job's id (0x-hex string) and any other fixed `fields`."""
    jid = "0x" + job_id.hex() if isinstance(job_id, bytes | bytearray) else str(job_id)
    extra: Mapping[str, Any] = {"job_id": jid, **fields}
    return JobLogger(logger, dict(extra))
