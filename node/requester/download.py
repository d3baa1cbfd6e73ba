"""Downloading a result from the provider's API and checking it against the root committed on chain.

The provider's node answers ``GET /results/<job id>`` only to the job's requester, with headers signed for
that node, job and time; each signature serves one download, so every try signs afresh (``headers``). Until
the node has the file it answers 404 ``no_result``; that and a node that does not answer (restarting) are
waited out; a signature refused as replayed (two downloads signed in the same second) is signed again in
the next second; anything else (401, 403) is a refusal and ends the download with the node's own reason.

The bytes are trusted only once their RFC 6962 Merkle root equals the root on chain: that root, not the
server, is what a dispute is judged against. A file that does not match is kept beside the target as
``<out>.mismatch``, since it is the evidence that the provider served something else than it committed.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from node.compute.commitment import commit_file
from node.requester.errors import RequesterError, ResultMismatch

_READ = 1 << 20
MAX_RESULT_BYTES = 16 << 30  # when the params do not say how large the result is (torch-export)


def _copy_capped(source: Any, target: Any, max_bytes: int, url: str) -> None:
    copied = 0
    while chunk := source.read(_READ):
        copied += len(chunk)
        if copied > max_bytes:
            raise RequesterError(f"{url} sent more than {max_bytes:,} bytes, more than this result can be; "
                                 "refused (the partial file is deleted)")
        target.write(chunk)


def download_result(endpoint: str, job_id: str, headers: Callable[[], dict[str, str]], root: bytes, out: Path, *,
                    timeout: float, poll_s: float = 1.0, http_timeout: float = 60.0,
                    max_bytes: int = MAX_RESULT_BYTES) -> Path:
    """Saves the result of ``job_id`` from ``endpoint`` at ``out`` once its root is ``root``; see the module
    docstring for what is retried. A server that sends more than ``max_bytes`` is refused before it fills
    the disk. Raises RequesterError (ResultMismatch for a wrong root)."""
    url = f"{endpoint.rstrip('/')}/results/{job_id}"
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_name(out.name + ".part")
    give_up = time.monotonic() + timeout
    waited_for = ""
    while True:
        request = urllib.request.Request(url, headers=headers())
        try:
            try:
                with urllib.request.urlopen(request, timeout=http_timeout) as resp, open(part, "wb") as fh:
                    _copy_capped(resp, fh, max_bytes, url)
            except RequesterError:
                part.unlink(missing_ok=True)
                raise
            break
        except urllib.error.HTTPError as exc:
            code, detail = _error_of(exc)
            if (exc.code, code) == (403, "replayed"):
                # Signatures cover a whole-second timestamp, so two downloads in one second (a retry, another
                # process) sign the same bytes; the next second gives a fresh signature.
                waited_for = "the node refused a signature as already used"
                time.sleep(max(0.0, 1.05 - time.time() % 1))
                if time.monotonic() < give_up:
                    continue
            elif exc.code != 404 or code != "no_result":
                raise RequesterError(f"{url} refused the download: {exc.code} {code}: {detail}") from None
            else:
                waited_for = f"the provider has no result yet ({detail})"
        except (urllib.error.URLError, OSError) as exc:  # refused, reset, timed out: a node restarting
            waited_for = f"the provider's API does not answer ({getattr(exc, 'reason', exc)})"
        if time.monotonic() >= give_up:
            part.unlink(missing_ok=True)
            raise RequesterError(f"gave up on {url} after {timeout:g} s: {waited_for}",
                                 "try `fetch` again later, or pass --endpoint if the provider serves elsewhere")
        time.sleep(poll_s)
    got = commit_file(part).root
    if got != root:
        kept = out.with_name(out.name + ".mismatch")
        os.replace(part, kept)
        raise ResultMismatch(f"the result served by {endpoint} has Merkle root 0x{got.hex()}, but the provider "
                             f"committed 0x{root.hex()} on chain; kept as {kept} for evidence", kept,
                             "do not accept it: dispute the job, or fetch again in case the file was damaged")
    os.replace(part, out)
    return out


def _error_of(exc: urllib.error.HTTPError) -> tuple[str, str]:
    """The node answers errors as JSON {"error": code, "detail": text}; anything else is shown as is."""
    try:
        body = json.loads(exc.read(64 * 1024))
        return str(body.get("error", "?")), str(body.get("detail", ""))
    except (ValueError, AttributeError, OSError):
        return "?", str(exc.reason)
