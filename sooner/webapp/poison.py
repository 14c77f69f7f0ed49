"""The poison list page ``/poison``: HTTP job runs whose steps failed every attempt; retry or discard them.

It reads ``store.poison`` (:mod:`sooner.store.poison`), retries through
:meth:`~sooner.runs.service.RunService.retry_many` and discards through the store, reporting per
run id. The buttons are POST forms with the CSRF token; changes need the admin role. The API is
:mod:`sooner.webapp.v1.poison`.
"""

from __future__ import annotations

from flask import Blueprint, render_template, request, url_for
from flask.typing import ResponseReturnValue

from sooner.webapp.context import admin_required, web_now, web_runs, web_store
from sooner.webapp.failed import bulk_action

bp = Blueprint("poison_view", __name__)

PAGE_LIMIT = 200


@bp.get("/poison")
def index() -> ResponseReturnValue:
    job = request.args.get("job", "").strip()[:1000] or None
    runs, total, truncated = web_store().poison.page(job=job, limit=PAGE_LIMIT)
    return render_template("poison.html", runs=runs, total=total, truncated=truncated, job=job or "", now=web_now())


@bp.post("/poison")
@admin_required
def act() -> ResponseReturnValue:
    return bulk_action(url_for("poison_view.index"), {
        "retry": ("retried", lambda ids, by: web_runs().retry_many(ids, by=by, source="web")),
        "discard": ("discarded", lambda ids, by: web_store().poison.discard(ids, by=by))})
