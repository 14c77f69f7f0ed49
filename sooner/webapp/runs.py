"""Runs: the run page (output tail + live updates), output pages as JSON, log download, cancel and re-run.

A run page embeds the newest output (at most ``INITIAL_CHARS``); older
chunks load on demand ("load earlier") from ``/runs/<id>/output?before=SEQ``,
and the live tail arrives over Socket.IO from the last embedded seq on, so a
run with a million lines opens as fast as one with ten.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response, flash, redirect, render_template, request, url_for

from sooner.errors import SoonerError
from sooner.store.runs import RunStatus
from sooner.webapp.context import admin_required, json_error, user_name, wants_json, web_store
from sooner.webapp.views import run_summary

bp = Blueprint("runs", __name__)

INITIAL_CHUNKS = 400
INITIAL_CHARS = 200_000
PAGE_CHUNKS = 400
DOWNLOAD_BATCH = 1000
LIST_PAGE = 50
_FIELDS = {"_id": 0, "seq": 1, "stream": 1, "text": 1}


def chunk_json(chunk: dict) -> dict[str, Any]:
    return {"seq": chunk["seq"], "stream": chunk.get("stream", "stdout"), "text": chunk.get("text", "")}


def output_tail(run_id: str, *, before: int | None = None, limit: int = INITIAL_CHUNKS,
                max_chars: int = INITIAL_CHARS) -> tuple[list[dict], bool]:
    """The newest chunks (before seq ``before`` if given), oldest first, and whether older ones exist."""
    store = web_store()
    query: dict[str, Any] = {"run": run_id}
    if before is not None:
        query["seq"] = {"$lt": before}
    docs = store.retry(lambda: list(store.db.run_output.find(query, _FIELDS).sort("seq", -1).limit(limit + 1)))
    more = len(docs) > limit
    docs = docs[:limit]
    kept: list[dict] = []
    size = 0
    for doc in docs:  # newest first
        size += len(doc.get("text", ""))
        if kept and size > max_chars:
            more = True
            break
        kept.append(chunk_json(doc))
    kept.reverse()
    return kept, more


@bp.get("/runs")
def index():
    store = web_store()
    status = request.args.get("status", "")
    job = request.args.get("job", "").strip()
    query: dict[str, Any] = {}
    if status in {s.value for s in RunStatus}:
        query["status"] = status
    if job:
        query["job"] = job
    sort = "queued_at" if job else "_id"  # single-field indexes the embedded server can sort with
    runs = store.retry(lambda: list(store.db.runs.find(query, {"data": 0}).sort(sort, -1).limit(LIST_PAGE)))
    return render_template("runs.html", runs=runs, status=status, job=job, statuses=[s.value for s in RunStatus])


@bp.get("/runs/<run_id>")
def detail(run_id: str):
    store = web_store()
    run = store.runs.get(run_id)
    if run["_id"] != run_id:  # a prefix: send the browser to the canonical URL
        return redirect(url_for("runs.detail", run_id=run["_id"]))
    job = store.jobs.find(run["job"])
    chunks, more = output_tail(run["_id"])
    event = None
    event_id = (run.get("trigger") or {}).get("event_id")
    if event_id:
        event = store.events.get(event_id)
    now = datetime.now(UTC)
    return render_template("run.html", run=run, job=job, event=event, summary=run_summary(run, now),
                           initial={"run": run["_id"], "chunks": chunks, "more": more,
                                    "status": run_summary(run, now)})


@bp.get("/runs/<run_id>/output")
def output(run_id: str):
    """Chunks as JSON: ``?before=SEQ`` (older page, for "load earlier") or ``?after=SEQ``."""
    store = web_store()
    run = store.runs.get(run_id)
    limit = min(max(request.args.get("limit", PAGE_CHUNKS, type=int) or PAGE_CHUNKS, 1), 2000)
    after = request.args.get("after", type=int)
    if after is not None:
        chunks = [chunk_json(c) for c in store.output.read(run["_id"], after_seq=after, limit=limit + 1)]
        return {"run": run["_id"], "chunks": chunks[:limit], "more": len(chunks) > limit}
    chunks, more = output_tail(run["_id"], before=request.args.get("before", type=int), limit=limit)
    return {"run": run["_id"], "chunks": chunks, "more": more}


@bp.get("/runs/<run_id>/log.txt")
def download(run_id: str):
    """The whole output as text/plain, streamed in batches (works for any size)."""
    store = web_store()
    run = store.runs.get(run_id)

    def generate() -> Iterator[str]:
        after = -1
        while True:
            chunks = store.output.read(run["_id"], after_seq=after, limit=DOWNLOAD_BATCH)
            for chunk in chunks:
                yield chunk.get("text", "")
            if len(chunks) < DOWNLOAD_BATCH:
                return
            after = chunks[-1]["seq"]

    disposition = "inline" if request.args.get("inline") else "attachment"
    return Response(generate(), mimetype="text/plain", headers={
        "Content-Disposition": f'{disposition}; filename="run-{run["_id"]}.log"', "Cache-Control": "no-store"})


@bp.post("/runs/<run_id>")
@admin_required
def change(run_id: str):
    store = web_store()
    run = store.runs.get(run_id)
    action = request.form.get("action", "")
    user = user_name()
    if action == "cancel":
        try:
            run = store.runs.request_cancel(run["_id"], by=user)
        except SoonerError as exc:
            return _answer(409, str(exc), run)
        if run["status"] == RunStatus.CANCELLED.value:
            store.runs.promote_waiting(run["job"])  # the next waiting run of the job may go now
        return _answer(200, "cancelled" if run["status"] == RunStatus.CANCELLED.value
                       else "cancel requested: the worker stops the script", run)
    if action == "rerun":
        from sooner.runs import queue_run

        trigger = {"type": "manual", "source": "web", "author": user, "rerun_of": run["_id"]}
        new = queue_run(store, run["job"], trigger, data=run.get("data"))
        if new is None:
            return _answer(409, "the run was not started", run)
        if wants_json():
            return {"run": new["_id"], "url": url_for("runs.detail", run_id=new["_id"])}, 201
        return redirect(url_for("runs.detail", run_id=new["_id"]))
    return _answer(400, f"unknown action {action!r}", run)


def _answer(status: int, message: str, run: dict):
    if wants_json():
        return ({"message": message, "status": run["status"]}, status) if status < 400 else json_error(status, message)
    flash(message, "error" if status >= 400 else "info")
    return redirect(url_for("runs.detail", run_id=run["_id"]))
