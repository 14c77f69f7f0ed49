"""Runs: the run page (output tail + live updates), output pages as JSON, log download, cancel, re-run and move.

Every ``/runs/<ref>`` route takes what people type for a run (``hello.sh#42``
url-encoded as ``hello.sh%2342``, ``hello.sh:42``, an id or a unique part of
one; :meth:`sooner.store.runs.RunRepo.get`); the run page redirects to its
URL by id. The page lists the events the run emitted, at most
``EMITTED_PAGE`` at a time (``?emitted=OFFSET`` for the next ones).

A run page embeds the newest output (at most ``INITIAL_BYTES``); older
chunks load on demand ("load earlier") from ``/runs/<id>/output?before=SEQ``,
and the live tail arrives over Socket.IO from the last embedded seq on, so a
run with a million lines opens as fast as one with ten. Every output page is
bounded in bytes (``OUTPUT_PAGE_BYTES``), and the log download streams the
output a few megabytes at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from sooner.errors import SoonerError
from sooner.model import EventTrigger, ManualTrigger, Run, RunStatus
from sooner.model.job_settings import InvalidJobSetting
from sooner.model.target import ANY_WORKER, describe_target, tag_target, worker_target
from sooner.model.waiting import wait_reasons
from sooner.store.reads import EMITTED_PAGE, OUTPUT_PAGE_BYTES
from sooner.webapp.context import (admin_required, json_error, user_name, wants_json, web_now, web_runs, web_state,
                                   web_store)
from sooner.webapp.views import run_summary

bp = Blueprint("runs", __name__)

INITIAL_CHUNKS = 400
INITIAL_BYTES = 200_000
PAGE_CHUNKS = 400
DOWNLOAD_BATCH_BYTES = 4 * OUTPUT_PAGE_BYTES
LIST_PAGE = 50


def chunk_json(chunk: dict) -> dict[str, Any]:
    return {"seq": chunk["seq"], "stream": chunk.get("stream", "stdout"), "text": chunk.get("text", "")}


def output_tail(run_id: str, *, before: int | None = None, limit: int = INITIAL_CHUNKS,
                max_bytes: int = INITIAL_BYTES) -> tuple[list[dict], bool]:
    """The newest chunks (before seq ``before`` if given), oldest first, and whether older ones exist.

    At most ``max_bytes`` of JSON (but always the newest chunk), so a page with huge lines stays small.
    """
    docs, more = web_store().reads.output_tail(run_id, before=before, limit=limit, max_bytes=max_bytes)
    return [chunk_json(doc) for doc in docs], more


@bp.get("/runs")
def index() -> ResponseReturnValue:
    store = web_store()
    status = request.args.get("status", "")
    status = status if status in RunStatus.values() else ""
    job = request.args.get("job", "").strip()
    runs = store.reads.runs_page(job=job or None, status=status or None, limit=LIST_PAGE, with_data=False)
    now = web_now()
    waits = wait_reasons(store.reads, runs, now, web_state().settings.heartbeat_s)  # the queued ones' ETA
    return render_template("runs.html", runs=runs, status=status, job=job, statuses=RunStatus.values(),
                           now=now, waits=waits)


@bp.get("/runs/<path:run_id>")
def detail(run_id: str) -> ResponseReturnValue:
    store = web_store()
    run = store.runs.get(run_id)
    offset = max(0, request.args.get("emitted", 0, type=int) or 0)
    if run.id != run_id:  # JOB#N or part of an id: send the browser to the canonical URL
        return redirect(url_for("runs.detail", run_id=run.id, emitted=offset or None))
    job = store.jobs.find(run.job)
    chunks, more = output_tail(run.id)
    trigger = run.trigger
    event = store.events.get(trigger.event_id) if isinstance(trigger, EventTrigger) and trigger.event_id else None
    now = web_now()
    if not chunks and store.reads.output_removed(run, now):
        flash(f"Output older than {store.output.policy.retention_days:g} days was removed (retention); "
              "the run's record is kept.", "info")
    state = web_state()
    summary = run_summary(run, now, wait_reasons(store.reads, [run], now, state.settings.heartbeat_s).get(run.id))
    follows = trigger.source_run or getattr(trigger, "rerun_of", None)
    linked = store.reads.runs_by_id([rid for rid in (follows, run.relocated_to) if rid], ("number",))
    return render_template("run.html", run=run, job=job, event=event, summary=summary, now=now,
                           chain=store.reads.chain(run), linked=linked,
                           emitted=store.reads.emitted_events(run.id, offset=offset, limit=EMITTED_PAGE),
                           emitted_offset=offset, notifications=store.notifications.for_run(run.id),
                           target=describe_target(run.target), move_to=MOVE_TO,
                           running=run.status is RunStatus.RUNNING,
                           initial={"run": run.id, "chunks": chunks, "more": more, "status": summary})


@bp.get("/runs/<path:run_id>/output")
def output(run_id: str) -> ResponseReturnValue:
    """Chunks as JSON: ``?before=SEQ`` (older page, for "load earlier") or ``?after=SEQ``."""
    store = web_store()
    run = store.runs.get(run_id)
    limit = min(max(request.args.get("limit", PAGE_CHUNKS, type=int) or PAGE_CHUNKS, 1), 2000)
    after = request.args.get("after", type=int)
    if after is not None:
        page = store.reads.output_after(run.id, after, limit=limit, max_bytes=OUTPUT_PAGE_BYTES)
        return {"run": run.id, "chunks": [chunk_json(c) for c in page.chunks], "more": page.more,
                "next_after": page.next_after}
    chunks, more = output_tail(run.id, before=request.args.get("before", type=int), limit=limit,
                               max_bytes=OUTPUT_PAGE_BYTES)
    return {"run": run.id, "chunks": chunks, "more": more}


@bp.get("/runs/<path:run_id>/log.txt")
def download(run_id: str) -> ResponseReturnValue:
    """The whole output as text/plain, streamed in batches (works for any size)."""
    store = web_store()
    run = store.runs.get(run_id)

    def generate() -> Iterator[str]:
        after = -1
        while True:
            page = store.reads.output_after(run.id, after, limit=5000, max_bytes=DOWNLOAD_BATCH_BYTES)
            yield "".join(chunk.get("text", "") for chunk in page.chunks)
            if not page.more:
                return
            after = page.next_after

    disposition = "inline" if request.args.get("inline") else "attachment"
    return Response(generate(), mimetype="text/plain", headers={
        "Content-Disposition": f'{disposition}; filename="run-{run.id}.log"', "Cache-Control": "no-store"})


@bp.post("/runs/<path:run_id>")
@admin_required
def change(run_id: str) -> ResponseReturnValue:
    run = web_store().runs.get(run_id)
    action = request.form.get("action", "")
    if action == "cancel":
        try:
            run = web_runs().cancel(run.id, by=user_name())
        except SoonerError as exc:
            return _answer(409, str(exc), run)
        # A queued or waiting run ended now (the service released the next waiting one); a running one was flagged.
        return _answer(200, "cancelled before it started" if run.status is RunStatus.CANCELLED
                       else "cancel requested: the worker stops the script", run)
    if action == "move":
        return _move(run)
    if action == "rerun":
        trigger = ManualTrigger(source="web", author=user_name(), rerun_of=run.id, source_ref=run.ref)
        new = web_runs().queue(run.job, trigger, data=run.data)
        if new is None:
            return _answer(409, "the run was not started", run)
        if wants_json():
            return {"run": new.id, "url": url_for("runs.detail", run_id=new.id)}, 201
        return redirect(url_for("runs.detail", run_id=new.id))
    return _answer(400, f"unknown action {action!r}", run)


MOVE_TO = ("worker", "tag", "any")


def _move(run: Run) -> ResponseReturnValue:
    """The run page's Move form: ``to`` (worker, tag or any), ``name``, and ``kill`` for a running run."""
    to, name = request.form.get("to", ""), request.form.get("name", "").strip()
    if to not in MOVE_TO:
        return _answer(400, f"move to: choose one of {', '.join(MOVE_TO)}, got {to[:40]!r}", run)
    try:
        target = worker_target(name) if to == "worker" else tag_target(name) if to == "tag" else ANY_WORKER
        moved = web_runs().move(run.id, target, by=user_name(), kill=request.form.get("kill") == "on")
    except InvalidJobSetting as exc:
        return _answer(400, str(exc), run)
    except SoonerError as exc:
        return _answer(409, str(exc), run)
    where = describe_target(target)
    message = (f"cancelling it on {moved.relocated_from.worker}: it continues as this run on {where}"
               if moved.relocated_from else f"moved to {where}")
    if moved.warning:
        message += f". Warning: {moved.warning}"
    if wants_json():
        return {"message": message, "run": moved.run.id, "warning": moved.warning,
                "url": url_for("runs.detail", run_id=moved.run.id)}
    flash(message, "info")
    return redirect(url_for("runs.detail", run_id=moved.run.id))


def _answer(status: int, message: str, run: Run) -> ResponseReturnValue:
    if wants_json():
        return ({"message": message, "status": run.status.value}, status) if status < 400 else json_error(status, message)
    flash(message, "error" if status >= 400 else "info")
    return redirect(url_for("runs.detail", run_id=run.id))
