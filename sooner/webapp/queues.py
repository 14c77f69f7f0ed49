"""The queue browser: ``/queues`` lists the ``queue_*`` collections, ``/queues/<name>`` browses one.

Flat ``data`` keys of the newest entries become columns; filters, search,
sort and paging come from the query string through
:mod:`sooner.store.queue_filters` (whitelisted fields and operators only). Nothing
here counts a whole queue on a page view: totals are estimates (a queue of at
most ``EXACT_SIZE_BELOW`` entries is counted, capped), exact counts of filters
are capped and fetched separately (``/count``, ``/stats``), and every browsing
query has a time budget. Bulk actions (set status, requeue, delete) need the
admin role, the CSRF token (checked app-wide by :mod:`sooner.webapp.auth`) and
a confirmation.
"""

from __future__ import annotations

import json
import logging
import re
import time
from datetime import datetime
from typing import Any

from bson import ObjectId
from flask import Blueprint, abort, flash, jsonify, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from sooner.store.queue_filters import (DATE_FIELDS, MAX_ROWS, OPERATORS, PAGE_SIZES, Column, QueueFilterError,
                                  QueueView, infer_columns, parse_view)
from sooner.store.queues import (SEARCH_WINDOW, InvalidEntryStatus, InvalidQueueName, Queue, QueueQueryTimeout,
                                 field_value, validate_entry_status)
from sooner.webapp.context import admin_required, is_admin, json_error, wants_json, web_store

logger = logging.getLogger(__name__)

bp = Blueprint("queues", __name__, url_prefix="/queues")

SAMPLE_SIZE = 200  # newest entries whose data keys become columns
SAMPLE_MAX_AGE_S = 10.0
COUNT_CAP = 10_000
COUNTS_MAX_AGE_S = 60.0
COUNTS_BUDGET_S = 5.0
MAX_BULK = 500
CELL_CHARS = 160
BULK_ACTIONS = {"set_status": "Set status", "requeue": "Requeue (status → pending)", "delete": "Delete"}
_FIXED = (Column("status", "string"), Column("createdAt", "date"), Column("updatedAt", "date"))


# -- pages -----------------------------------------------------------------------

@bp.get("/")
def index() -> ResponseReturnValue:
    """Every queue with its approximate size and, when known (cached), its counts by status."""
    store = web_store()
    queues = []
    for name in store.queues.names():
        try:
            queue = store.queues(name)
        except InvalidQueueName:
            queues.append({"name": name, "browsable": False})
            continue
        size, exact = queue.size()
        queues.append({"name": name, "browsable": True, "size": size, "exact": exact,
                       "by_status": queue.store.queues.peek(("counts", name), COUNTS_MAX_AGE_S)})
    return render_template("queues.html", section="queues", queues=queues)


@bp.get("/<name>")
def browse(name: str) -> ResponseReturnValue:
    """One queue as a table: filters, search, sort, pages, bulk actions."""
    started = time.perf_counter()
    queue = open_queue(name)
    columns, hidden, statuses = shape_of(queue)
    context: dict[str, Any] = {"queue": queue, "columns": columns, "hidden_columns": hidden, "rows": [],
                               "has_next": False, "notices": [], "error": None, "view": QueueView()}
    try:
        view = context["view"] = parse_view(request.args, columns, statuses)
    except QueueFilterError as exc:
        context["error"] = str(exc)
        return _render_table(context, started), 400
    if any(not f.strip() for f in request.args.getlist("f")):
        # A filter row left empty (submitted by a browser without scripts): go to the address without it.
        return redirect(view.url(url_for(".browse", name=queue.name)))
    context["notices"] += prepare_sort(queue, view, columns)
    try:
        rows, notes = fetch_rows(queue, view)
    except QueueQueryTimeout as exc:
        context["error"] = str(exc)
        return _render_table(context, started), 503
    context["notices"] += notes
    context.update(rows=[_row(entry, columns) for entry in rows[:view.per]], has_next=len(rows) > view.per)
    return _render_table(context, started)


def fetch_rows(queue: Queue, view: QueueView) -> tuple[list[dict], list[str]]:
    """The view's entries (one more than a page: is there a next?) and notices (a search that stopped early)."""
    if not view.search_branches:
        return queue.page(view.query, view.sort_spec, skip=view.skip, limit=view.per + 1), []
    rows, complete = queue.search_page(view.query, view.search_branches, view.sort_spec, skip=view.skip,
                                       limit=view.per + 1, window=SEARCH_WINDOW)
    if complete:
        return rows, []
    return rows, [f"The search looked through the first {SEARCH_WINDOW:,} entries in this order: "
                  "add filters or change the sort to search others."]


def _render_table(context: dict, started: float) -> str:
    queue: Queue = context["queue"]
    size, exact = queue.size()
    context.update(
        section="queues", operators=OPERATORS, page_sizes=PAGE_SIZES, max_rows=MAX_ROWS, actions=BULK_ACTIONS,
        admin=is_admin(), size=size, exact=exact, path=url_for(".browse", name=queue.name),
        by_status=queue.store.queues.peek(("counts", queue.name), COUNTS_MAX_AGE_S),
        fields=[c for c in (*_FIXED, *context["columns"]) if c.usable],
        statuses=_known_statuses(queue, context), server_ms=(time.perf_counter() - started) * 1000)
    return render_template("queues_table.html", **context)


def shape_of(queue: Queue) -> tuple[list[Column], int, set[str]]:
    """Columns, hidden key count and known statuses, from the newest entries (remembered for a few seconds)."""
    def compute() -> tuple[list[Column], int, set[str]]:
        sample = queue.sample(SAMPLE_SIZE)
        columns, hidden = infer_columns(sample)
        return columns, hidden, {str(e["status"]) for e in sample if isinstance(e.get("status"), str)}
    columns, hidden, seen = queue.store.queues.cached(("sample", queue.name), SAMPLE_MAX_AGE_S, compute)
    counts = queue.store.queues.peek(("counts", queue.name), COUNTS_MAX_AGE_S) or {}
    return columns, hidden, seen | set(counts)


def _known_statuses(queue: Queue, context: dict) -> list[str]:
    counts = queue.store.queues.peek(("counts", queue.name), COUNTS_MAX_AGE_S) or {}
    seen = {row["status"] for row in context["rows"] if row["status"]}
    return sorted(set(counts) | seen | set(context["view"].statuses))


def prepare_sort(queue: Queue, view: QueueView, columns: list[Column]) -> list[str]:
    """Index the sort column when it is a sampled data key (bounded); say so, or why not."""
    if not view.sort.startswith("data."):
        queue.ensure_sort_index(view.sort)
        return []
    if not any(c.field == view.sort and c.sortable for c in columns):
        return [f"{view.sort} is not a column of the newest entries, so it has no index: sorting by it may be slow."]
    started = time.perf_counter()
    outcome = queue.ensure_sort_index(view.sort)
    if outcome == "created":
        return [f"Created an index on {view.sort} so that sorting by it stays fast "
                f"({time.perf_counter() - started:.1f} s, once)."]
    if outcome == "limit":
        return [f"{view.sort} has no index (this queue already has the most indexed data columns allowed): "
                "sorting by it may be slow on a big queue."]
    if outcome == "unindexable":
        return [f"{view.sort} cannot have an index on this database (its name has characters other than "
                "letters, digits and '_'): sorting by it may be slow on a big queue."]
    return []


@bp.get("/<name>/entries/<path:token>")
def entry(name: str, token: str) -> ResponseReturnValue:
    """One entry, whole, as pretty JSON (``?format=json`` for the raw document)."""
    queue = open_queue(name)
    document = queue.get_exact(decode_id(token))
    if document is None:
        abort(404, f"queue {name!r} has no entry {token!r}")
    text = json.dumps(jsonable(document), indent=2, ensure_ascii=False, sort_keys=False)
    if request.args.get("format") == "json":
        return text, 200, {"Content-Type": "application/json; charset=utf-8"}
    return render_template("queues_entry.html", section="queues", queue=queue, entry=document, token=token,
                           text=text, admin=is_admin(), actions=BULK_ACTIONS)


# -- JSON helpers for the pages' scripts -----------------------------------------

@bp.get("/<name>/count")
def count(name: str) -> ResponseReturnValue:
    """How many entries match the page's filters, up to a cap: ``{"count": n, "more": bool}``."""
    queue = open_queue(name)
    columns, _, statuses = shape_of(queue)
    try:
        view = parse_view(request.args, columns, statuses)
    except QueueFilterError as exc:
        return json_error(400, str(exc))
    if view.search_branches:
        return json_error(422, "search results are not counted")
    try:
        n = queue.count(view.query, cap=COUNT_CAP)
    except QueueQueryTimeout as exc:
        return json_error(503, str(exc))
    return jsonify({"count": min(n, COUNT_CAP), "more": n > COUNT_CAP, "cap": COUNT_CAP})


@bp.get("/<name>/stats")
def stats(name: str) -> ResponseReturnValue:
    """Approximate size and entries per status (computed at most once a minute per queue)."""
    queue = open_queue(name)
    try:
        by_status = queue.counts_by_status(max_age_s=COUNTS_MAX_AGE_S, timeout_s=COUNTS_BUDGET_S)
    except QueueQueryTimeout as exc:
        return json_error(503, str(exc))
    return jsonify({"estimate": queue.estimated_count(), "by_status": by_status})


# -- bulk actions ------------------------------------------------------------------

@bp.post("/<name>/bulk")
@admin_required
def bulk(name: str) -> ResponseReturnValue:
    """Set the status of, requeue or delete the selected entries (asks for confirmation first)."""
    queue = open_queue(name)
    back = _back(name)
    try:
        action, status, ids = _bulk_request()
    except ValueError as exc:
        if wants_json():
            return json_error(400, str(exc))
        flash(str(exc), "error")
        return redirect(back)
    if request.form.get("confirm") != "yes" and not wants_json():
        return render_template("queues_confirm.html", section="queues", queue=queue, action=action,
                               label=BULK_ACTIONS[action], status=status, tokens=request.form.getlist("id"),
                               back=back)
    changed = _apply(queue, action, status, ids)
    logger.info("queue %s: %s %s on %d entries", name, action, status or "", changed)
    message = _bulk_message(action, status, changed, len(ids))
    if wants_json():
        return jsonify({"changed": changed, "message": message})
    flash(message)
    return redirect(back)


def _bulk_request() -> tuple[str, str | None, list[Any]]:
    action = request.form.get("action", "")
    if action not in BULK_ACTIONS:
        raise ValueError(f"unknown action {action!r} (allowed: {', '.join(BULK_ACTIONS)})")
    status = request.form.get("status", "").strip() if action == "set_status" else None
    if status is not None:
        try:
            validate_entry_status(status)
        except InvalidEntryStatus:
            raise ValueError("the new status must be 1-64 letters, digits, '_', '-', '.' or ':'") from None
    tokens = request.form.getlist("id")
    if not tokens:
        raise ValueError("select at least one entry first")
    if len(tokens) > MAX_BULK:
        raise ValueError(f"at most {MAX_BULK} entries at once")
    return action, status, [decode_id(token) for token in tokens]


def _apply(queue: Queue, action: str, status: str | None, ids: list[Any]) -> int:
    if action == "delete":
        return queue.delete_many(ids)
    if action == "requeue":
        return queue.requeue_many(ids)
    return queue.set_status_many(ids, status or "")


def _bulk_message(action: str, status: str | None, changed: int, asked: int) -> str:
    entries = f"{changed} entr{'y' if changed == 1 else 'ies'}"
    done = {"delete": f"Deleted {entries}", "requeue": f"Requeued {entries} (status pending)",
            "set_status": f"Set status {status!r} on {entries}"}[action]
    return done if changed == asked else f"{done}; {asked - changed} selected entries no longer existed"


def _back(name: str) -> str:
    """Where to return after a bulk action: the same queue page only (no open redirect)."""
    path = url_for(".browse", name=name)
    target = request.form.get("back", "")
    return target if target == path or target.startswith(path + "?") else path


# -- helpers -----------------------------------------------------------------------

def open_queue(name: str) -> Queue:
    """The existing queue ``name``; a 404 for a name that is not valid or has no collection (the page and API v1)."""
    store = web_store()
    try:
        queue = store.queues(name)
    except InvalidQueueName as exc:
        abort(404, str(exc))
    if not shape_of(queue)[0] and name not in store.queues.names():
        store.queues.forget(("sample", name))
        abort(404, f"no queue named {name!r}")
    return queue


def encode_id(value: Any) -> str | None:
    """An entry id as URL/form text: ObjectIds as hex, strings as ``s:…``, integers as ``i:…``."""
    if isinstance(value, ObjectId):
        return str(value)
    if isinstance(value, str):
        return "s:" + value
    if isinstance(value, int) and not isinstance(value, bool):
        return f"i:{value}"
    return None


def decode_id(token: str) -> Any:
    """The id :func:`encode_id` wrote (a 400 for anything else)."""
    if ObjectId.is_valid(token) and len(token) == 24:
        return ObjectId(token)
    if token.startswith("s:"):
        return token[2:]
    if token.startswith("i:") and re.fullmatch(r"-?\d{1,19}", token[2:]):
        return int(token[2:])
    abort(400, f"not an entry id: {token[:80]!r}")


def _row(entry: dict, columns: list[Column]) -> dict:
    return {"token": encode_id(entry.get("_id")), "id": str(entry.get("_id")), "status": entry.get("status"),
            "createdAt": entry.get("createdAt"), "updatedAt": entry.get("updatedAt"),
            "cells": [cell(field_value(entry, c.field) if c.field != "data" else _scalar_data(entry))
                      for c in columns]}


def _scalar_data(entry: dict) -> Any:
    data = entry.get("data")
    return None if isinstance(data, dict) else data


def cell(value: Any) -> dict:
    """How a value shows in the table: text (escaped by Jinja), a kind for styling, and whether it is cut."""
    if value is None:
        return {"text": "", "kind": "null", "cut": False}
    if isinstance(value, datetime):
        return {"text": value.isoformat().replace("+00:00", "Z"), "kind": "date", "cut": False}
    if isinstance(value, bool):
        text, kind = ("true" if value else "false"), "bool"
    elif isinstance(value, (int, float)):
        text, kind = repr(value), "number"
    elif isinstance(value, str):
        text, kind = value, "string"
    else:
        text, kind = json.dumps(jsonable(value), ensure_ascii=False), "object"
    cut = len(text) > CELL_CHARS
    return {"text": text[:CELL_CHARS] + "…" if cut else text, "kind": kind, "cut": cut, "full": text if cut else ""}


def jsonable(value: Any) -> Any:
    """``value`` as JSON values: dates as ISO 8601, ObjectIds as hex, anything else unknown as its repr."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, ObjectId):
        return str(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


@bp.app_template_global("queue_field_label")
def field_label(name: str) -> str:
    return name[5:] if name.startswith("data.") else name


@bp.app_template_global("queue_is_date_field")
def is_date_field(name: str) -> bool:
    return name in DATE_FIELDS


