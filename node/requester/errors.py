"""The requester tools' errors: each message is written for the person at the terminal."""

from __future__ import annotations

from pathlib import Path


class RequesterError(RuntimeError):
    """A requester action cannot be done; the message says why and ``hint`` (optional) what to do."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint


class ResultMismatch(RequesterError):
    """The provider served a file whose Merkle root is not the one it committed on chain. The file is kept
    (``path``) as evidence; accepting is pointless, since the chain's root is what a dispute judges."""

    def __init__(self, message: str, path: Path, hint: str = "") -> None:
        super().__init__(message, hint)
        self.path = path
