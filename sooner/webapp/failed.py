"""The Failed view: the ``/failed`` page and ``/api/failed`` (list, bulk retry, bulk dismiss).

Both read ``store.failed`` with a :class:`~sooner.model.failed.FailedQuery`
built from the request (its checks are the only ones: a bad filter is a 400
with the message), retry through the run service
(:meth:`~sooner.runs.service.RunService.retry_many`) and dismiss through the
store; both report per run id. The page's bulk buttons are POST forms with the
CSRF token; the API takes ``{"runs": [ids]}`` with a bearer token. Changes need
the admin role.

GET  /api/failed?job=&worker=&error=&q=&sort=time|job|worker&order=asc|desc&group=job|worker|error&limit=
POST /api/failed/retry     body ``{"runs": ["<id>", …]}``   [admin]
POST /api/failed/dismiss   body ``{"runs": ["<id>", …]}``   [admin]
"""

from __future__ import annotations

from typing import Any, Callable
from urllib.parse import urlencode

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from werkzeug.datastructures import MultiDict

from sooner.model import Job, Run
from sooner.model.failed import GROUPS, MAX_BULK, SORTS, BulkResult, FailedGroup, FailedQuery, InvalidFailedQuery
from sooner.webapp.context import admin_required, json_error, user_name, web_now, web_runs, web_store

bp = Blueprint("failed_view", __name__)
api_bp = Blueprint("failed_api", __name__, url_prefix="/api/failed")

PAGE_LIMIT = 200
MAX_RUN_ID_CHARS = 64
# The query parameters the page keeps when it sends the browser back after a bulk action.
FILTER_PARAMS = ("job", "worker", "error", "q", "sort", "order", "group")


def query_from(args: MultiDict[str, str], default_limit: int) -> FailedQuery:
    """The FailedQuery of these request parameters; InvalidFailedQuery says which one is wrong."""
    order = args.get("order", "").strip()
    if order not in ("", "asc", "desc"):
        raise InvalidFailedQuery(f"order: must be asc or desc, got {order!r}")
    limit_text = args.get("limit", "").strip()
    try:
        limit = int(limit_text) if limit_text else default_limit
    except ValueError:
        raise InvalidFailedQuery(f"limit: must be a whole number, got {limit_text!r}") from None
    return FailedQuery(job=_text(args, "job"), worker=_text(args, "worker"), error=_text(args, "error"),
                       search=_text(args, "q"), sort=args.get("sort", "").strip() or "time",
                       descending=None if not order else order == "desc", group_by=_text(args, "group"), limit=limit)


def _text(args: MultiDict[str, str], name: str) -> str | None:
    return args.get(name, "").strip() or None


def failed_run_json(run: Run, jobs: dict[str, Job]) -> dict[str, Any]:
    """A run of the view as the API shows it: the run's JSON plus its error, error group and attempt label."""
    from sooner.webapp.api import run_json

    job = jobs.get(run.job)
    return {**run_json(run), "error": run.error, "error_group": run.error_group,
            "attempt_label": job.retry.attempt_label(run.attempt) if job else str(run.attempt)}


def group_json(group: FailedGroup) -> dict[str, Any]:
    from sooner.webapp.formatting import iso

    return {"key": group.key, "count": group.count, "newest": iso(group.newest) or None}


def _jobs_of(runs: list[Run]) -> dict[str, Job]:
    store = web_store()
    return {job.name: job for job in (store.jobs.find(name) for name in {run.job for run in runs}) if job}


# -- the page ---------------------------------------------------------------------
@bp.get("/failed")
def index() -> ResponseReturnValue:
    error = None
    try:
        query = query_from(request.args, PAGE_LIMIT)
    except InvalidFailedQuery as exc:
        error, query = str(exc), FailedQuery(limit=PAGE_LIMIT)
    page = web_store().failed.page(query)
    filters = {key: request.args.get(key, "") for key in FILTER_PARAMS}
    return render_template("failed.html", page=page, query=query, filters=filters, error=error, sorts=SORTS,
                           groups=GROUPS, jobs=_jobs_of(page.runs), now=web_now(),
                           back=_back_url(filters)), 400 if error else 200


@bp.post("/failed")
@admin_required
def act() -> ResponseReturnValue:
    back = request.form.get("next", "")
    back = back if back.startswith("/failed") and not back.startswith("//") else url_for("failed_view.index")
    return bulk_action(back, {"retry": ("retried", _retry),
                              "dismiss": ("dismissed", lambda ids, by: web_store().failed.dismiss(ids, by=by))})


BulkStep = Callable[[list[str], str], list[BulkResult]]  # (run ids, by whom) -> one result per run


def bulk_action(back: str, actions: dict[str, tuple[str, BulkStep]]) -> ResponseReturnValue:
    """The bulk form of the Failed view and the poison list: check the form's action and runs, do it, flash
    what happened to each run, and go back. ``actions``: name -> (past tense for the message, the step)."""
    action = request.form.get("action", "")
    ids = [i.strip() for i in request.form.getlist("run") if i.strip()]
    if action not in actions:
        flash(f"unknown action {action!r}: use {' or '.join(actions)}", "error")
        return redirect(back)
    if not ids:
        flash("select at least one run first", "error")
        return redirect(back)
    if len(ids) > MAX_BULK:
        flash(f"at most {MAX_BULK} runs at once, got {len(ids)}", "error")
        return redirect(back)
    done_word, step = actions[action]
    results = step(ids, user_name())
    done = [r for r in results if r.ok]
    if done:
        flash(f"{done_word} {len(done)} run(s)", "info")
    for refused in (r for r in results if not r.ok):
        flash(f"{refused.id}: {refused.message}", "error")
    return redirect(back)


def _retry(ids: list[str], by: str) -> list[BulkResult]:
    return web_runs().retry_many(ids, by=by, source="web")


def _act(action: str, ids: list[str]) -> list[BulkResult]:
    return _retry(ids, user_name()) if action == "retry" else web_store().failed.dismiss(ids, by=user_name())


def _back_url(filters: dict[str, str]) -> str:
    kept = {key: value for key, value in filters.items() if value}
    return url_for("failed_view.index") + (f"?{urlencode(kept)}" if kept else "")


# -- the API ----------------------------------------------------------------------
@api_bp.get("")
def api_list() -> ResponseReturnValue:
    try:
        query = query_from(request.args, 100)
    except InvalidFailedQuery as exc:
        return json_error(400, str(exc))
    page = web_store().failed.page(query)
    jobs = _jobs_of(page.runs)
    return {"runs": [failed_run_json(run, jobs) for run in page.runs], "total": page.total,
            "group_by": query.group_by, "groups": [group_json(g) for g in page.groups], "truncated": page.truncated}


@api_bp.post("/retry")
@admin_required
def api_retry() -> ResponseReturnValue:
    return _api_bulk("retry")


@api_bp.post("/dismiss")
@admin_required
def api_dismiss() -> ResponseReturnValue:
    return _api_bulk("dismiss")


def _api_bulk(action: str) -> ResponseReturnValue:
    ids, problem = _body_run_ids()
    if problem is not None:
        return json_error(400, problem)
    results = _act(action, ids)
    return {"results": [r.to_json() for r in results], "ok": sum(r.ok for r in results),
            "refused": sum(not r.ok for r in results)}


def _body_run_ids() -> tuple[list[str], str | None]:
    """(run ids, problem): the ``runs`` list of a JSON object body, checked."""
    example = 'send {"runs": ["<run id>", …]} as JSON'
    if not request.is_json:
        return [], f"{example} with 'Content-Type: application/json'"
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        return [], f"the body is not a JSON object: {example}"
    unknown = sorted(set(body) - {"runs"})
    if unknown:
        return [], f"unknown field(s) {', '.join(map(str, unknown))}: only \"runs\" is accepted"
    runs = body.get("runs")
    if not isinstance(runs, list) or not runs:
        return [], f"\"runs\" must be a non-empty list of run ids: {example}"
    if len(runs) > MAX_BULK:
        return [], f"\"runs\" may hold at most {MAX_BULK} ids, got {len(runs)}"
    for index, value in enumerate(runs):
        if not isinstance(value, str) or not value.strip() or len(value) > MAX_RUN_ID_CHARS:
            return [], f"runs[{index}]: must be a run id (text of 1-{MAX_RUN_ID_CHARS} characters), got {value!r:.80}"
    return [value.strip() for value in runs], None
