"""The validator of a run as the REST API serves it (``ETag``), from the fields that change while it lives.

A client polls ``GET /api/v1/runs/{id}`` with ``If-None-Match``; the server reads only
:data:`RUN_ETAG_FIELDS` of the run (one small projection, never ``data``) and answers 304 while
:func:`run_etag` is unchanged. So every field of the v1 run representation that can change after
the run is queued is listed here, and the representation holds nothing derived from the clock.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

from sooner.model.run import Run

# What changes after a run is queued (``updated-at-ish``: each change of state sets one of these).
RUN_ETAG_FIELDS = ("status", "progress", "worker", "target", "started_at", "finished_at", "exit_code", "note",
                   "cancel_requested", "not_before", "next_attempt", "relocated_to", "failed_view", "dismissed_at",
                   "duration_s")


def _text(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    if hasattr(value, "value"):
        return str(value.value)
    if hasattr(value, "to_doc"):
        return repr(sorted(value.to_doc().items()))
    return repr(value)


def run_etag(run: Run) -> str:
    """A strong ETag value (without quotes) for ``run``: a digest of its id and :data:`RUN_ETAG_FIELDS`."""
    digest = hashlib.sha256(run.id.encode())
    for name in RUN_ETAG_FIELDS:
        digest.update(b"\0" + name.encode() + b"=" + _text(getattr(run, name, None)).encode())
    return digest.hexdigest()[:32]
