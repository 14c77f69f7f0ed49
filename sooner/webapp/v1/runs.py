"""``/api/v1/runs``: list (filters, cursor), get (ETag polling), output pages, cancel."""

from __future__ import annotations

from typing import Any

from flask import Response, request
from flask.typing import ResponseReturnValue

from sooner.errors import SoonerError
from sooner.model import Run
from sooner.model.etag import RUN_ETAG_FIELDS, run_etag
from sooner.model.token import ApiAction
from sooner.store.reads import OUTPUT_PAGE_BYTES
from sooner.webapp.context import user_name, web_runs, web_store
from sooner.webapp.formatting import iso
from sooner.webapp.runs import chunk_json
from sooner.webapp.v1 import schemas as s
from sooner.webapp.v1.common import allowed, blp, decode_cursor, encode_cursor, refuse

# Polling clients revalidate every time (ETag), and caches keep no copy they would not ask about.
POLL_CACHE_CONTROL = "no-cache"


def run_body(run: Run) -> dict[str, Any]:
    """The v1 representation: only stored fields (nothing computed from the clock), so the ETag covers it."""
    progress = run.progress
    return {
        "id": run.id, "number": run.number, "ref": run.ref, "job": run.job, "status": run.status.value,
        "trigger": _plain(run.trigger.to_doc()), "data": run.data, "commit": run.commit, "target": run.target,
        "worker": run.worker, "attempt": run.attempt,
        "progress": {"current": progress.current, "max": progress.max} if progress else None,
        "exit_code": run.exit_code, "note": run.note, "cancel_requested": run.cancel_requested,
        "queued_at": iso(run.queued_at) or None, "not_before": iso(run.not_before) or None,
        "started_at": iso(run.started_at) or None, "finished_at": iso(run.finished_at) or None,
        "duration_s": run.duration_s, "chain": run.chain_root, "next_attempt": run.next_attempt,
        "relocated_to": run.relocated_to, "failed_view": run.failed_view,
        "dismissed_at": iso(run.dismissed_at) or None, "dedupe_key": run.dedupe_key,
    }


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "isoformat"):
        return iso(value)
    return value


@blp.route("/runs")
@blp.arguments(s.RunListQuery, location="query")
@blp.response(200, s.RunListSchema)
def list_runs(query: dict[str, Any]) -> ResponseReturnValue:
    """Runs newest first, of ``job`` and in ``status`` if given; page on with ``cursor`` = ``next_cursor``."""
    try:
        before = decode_cursor(query.get("cursor"))
    except ValueError as exc:
        return refuse(400, f"cursor: {exc}", "cursor")
    limit = query["limit"]
    found = web_store().reads.runs_page(job=query.get("job"), status=query.get("status"), limit=limit + 1,
                                        before=before, with_data=False)
    page = found[:limit]
    return {"runs": [run_body(r) for r in page], "next_cursor": encode_cursor(page[-1].id) if len(found) > limit else None}


@blp.route("/runs/<path:run_id>")
@blp.response(200, s.RunSchema, headers={"ETag": {"schema": {"type": "string"}}})
@blp.alt_response(304, description="not modified since the ETag sent in If-None-Match")
def get_run(run_id: str) -> ResponseReturnValue:
    """One run, with an ``ETag``: send it back in ``If-None-Match`` to get 304 while nothing changed."""
    store = web_store()
    if request.if_none_match:
        small = store.reads.runs_by_id([run_id], fields=RUN_ETAG_FIELDS).get(run_id)
        # The poll's whole cost after auth: this one small read and one digest (measured: bench/api_poll.py).
        if small is not None and request.if_none_match.contains(tag := run_etag(small)):
            return _not_modified(tag)
    run = store.runs.get(run_id)
    tag = run_etag(run)
    if request.if_none_match.contains(tag):
        return _not_modified(tag)
    return run_body(run), 200, {"ETag": f'"{tag}"', "Cache-Control": POLL_CACHE_CONTROL}


def _not_modified(tag: str) -> Response:
    return Response(status=304, headers={"ETag": f'"{tag}"', "Cache-Control": POLL_CACHE_CONTROL})


@blp.route("/runs/<path:run_id>", methods=["DELETE"])
@blp.response(200, s.RunSchema)
def cancel_run(run_id: str) -> ResponseReturnValue:
    """Cancel: a queued or waiting run ends at once, a running one is terminated by its worker."""
    run = web_store().runs.get(run_id)
    if (refusal := allowed(ApiAction.RUN, [run.job])) is not None:
        return refusal
    try:
        return run_body(web_runs().cancel(run.id, by=user_name()))
    except SoonerError as exc:
        return refuse(409, str(exc))


@blp.route("/runs/<path:run_id>/output")
@blp.arguments(s.OutputQuery, location="query")
@blp.response(200, s.OutputSchema)
def run_output(query: dict[str, Any], run_id: str) -> ResponseReturnValue:
    """Output chunks after seq ``after``, at most ``limit`` and 1 MB; page on with ``after`` = ``next_after``."""
    store = web_store()
    run = store.runs.get(run_id)  # before the chunks: a finished status then means nothing follows them
    page = store.reads.output_after(run.id, query["after"], limit=query["limit"], max_bytes=OUTPUT_PAGE_BYTES)
    return {"run": run.id, "status": run.status.value, "chunks": [chunk_json(c) for c in page.chunks],
            "more": page.more, "next_after": page.next_after}
