"""Logging set-up is process-wide: tests that call it give the next test the root logger it had."""

from __future__ import annotations

import logging
from collections.abc import Iterator


def restore_root_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    chatty = {name: logging.getLogger(name).level for name in ("web3", "urllib3", "websockets")}
    yield
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
    root.setLevel(level)
    for name, lvl in chatty.items():
        logging.getLogger(name).setLevel(lvl)
    logging.captureWarnings(False)
