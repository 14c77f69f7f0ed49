"""Webhooks: ``POST /hooks/<provider>/<hook>`` starts a run of the hook's job.

The request is signed by the provider (see :mod:`sooner.model.webhook`), so it
needs no session and no CSRF token; it is rate limited per hook instead.
Answers (JSON):

- ``202 {run, url, delivery}``: accepted, which means stored. The run is in
  the database before the answer, so it starts whenever a worker is online.
- ``200 {run, url, delivery, duplicate: true}``: that delivery id was accepted
  before; no second run (a claim still being stored answers 202).
- ``200 {ignored}``: signed, but not an event or branch the hook maps (GitHub's ``ping`` too).
- ``400`` bad JSON or delivery id, ``401`` unsigned or mismatched, ``404`` no
  such hook, ``413`` a body over 96 KiB, ``429`` too many requests.

Every answer but 404 and 429 is logged in the hook's delivery log (``sooner hook list --log``).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from flask import Blueprint, jsonify, request, url_for
from flask.typing import ResponseReturnValue

from sooner.errors import SoonerError
from sooner.model.data import InvalidData, check_run_data
from sooner.model.trigger import WebhookTrigger
from sooner.model.webhook import (MAX_BODY_BYTES, PROVIDERS, Delivery, Hook, InvalidHook, WebhookRefused,
                                  read_delivery, validate_hook_name)
from sooner.store.webhooks import ACCEPTED, IGNORED, REFUSED
from sooner.webapp.auth import client_address, retry_after
from sooner.webapp.context import json_error, web_now, web_runs, web_state, web_store
from sooner.webapp.rate import RateLimit

bp = Blueprint("hooks", __name__)

CLAIM_STALE_S = 30  # a claim whose run is still missing after this was cut short: the next copy stores it


def hook_limit() -> RateLimit:
    """The app's per-hook request budget (30 at once, then one a second)."""
    state = web_state()
    limit = state.extra.get("hook_rate")
    if limit is None:
        limit = state.extra["hook_rate"] = RateLimit(state.store.clock, burst=30, per_s=1.0)
    return limit


@bp.post("/hooks/<provider>/<name>")
def receive(provider: str, name: str) -> ResponseReturnValue:
    """Verify a delivery and store its run (see the module docstring for the answers)."""
    hook = _hook(provider, name)
    if hook is None:
        return json_error(404, f"no {provider[:20]} hook named {name[:64]!r}")
    wait = hook_limit().take(hook.name)
    if wait:
        response = json_error(429, f"too many deliveries for hook {hook.name!r}: try again later")
        response.headers["Retry-After"] = retry_after(wait)
        return response
    store, now = web_store(), web_now()
    body = request.stream.read(MAX_BODY_BYTES + 1)
    if len(body) > MAX_BODY_BYTES:
        return _refuse(hook, 413, f"the body is over {MAX_BODY_BYTES // 1024} KiB (it becomes the run's data)", now)
    try:
        delivery = read_delivery(hook, dict(request.headers.items()), body, now)
        check_run_data(delivery.payload, "the webhook payload")
    except WebhookRefused as exc:
        return _refuse(hook, exc.status, str(exc), now)
    except InvalidData as exc:
        return _refuse(hook, 400, str(exc), now)
    reason = hook.ignores(delivery.event, delivery.branch)
    if reason is not None:
        store.deliveries.record(hook.name, IGNORED, 200, reason, now=now, delivery=delivery.id,
                                event=delivery.event, address=client_address())
        return jsonify({"ignored": reason, "delivery": delivery.id})
    return _accept(hook, delivery, now)


def _hook(provider: str, name: str) -> Hook | None:
    if provider not in PROVIDERS:
        return None
    try:
        validate_hook_name(name)
    except InvalidHook:
        return None
    hook = web_store().hooks.get(name)
    return hook if hook is not None and hook.provider == provider else None


def _refuse(hook: Hook, status: int, message: str, now: datetime) -> ResponseReturnValue:
    web_store().deliveries.record(hook.name, REFUSED, status, message, now=now, address=client_address(),
                                  delivery=_sent_delivery_id())
    return json_error(status, message)


def _sent_delivery_id() -> str | None:
    for header in ("X-GitHub-Delivery", "X-Gitlab-Event-UUID", "X-Gitea-Delivery", "X-Forgejo-Delivery", "webhook-id"):
        if value := request.headers.get(header):
            return value[:128]
    return None


def _trigger(hook: Hook, delivery: Delivery, now: datetime) -> WebhookTrigger:
    author = delivery.author
    return WebhookTrigger(provider=hook.provider, hook=hook.name, delivery=delivery.id, event=delivery.event,
                          branch=delivery.branch, url=delivery.url, timestamp=now, message=delivery.message,
                          author=author.get("username") or author.get("name"), author_name=author.get("name"),
                          author_email=author.get("email"), author_username=author.get("username"))


def _accept(hook: Hook, delivery: Delivery, now: datetime) -> ResponseReturnValue:
    store = web_store()
    job = store.jobs.find(hook.job)
    if job is None or job.deleted:
        return _refuse(hook, 409, f"the hook's job {hook.job!r} does not exist (any more)", now)
    run_id = store.runs.new_id()
    earlier = store.deliveries.claim(hook.name, delivery.id, run_id, now=now, event=delivery.event,
                                     branch=delivery.branch, address=client_address())
    if earlier is not None:
        return _duplicate(hook, delivery, earlier, now)
    return _store_run(hook, delivery, run_id, now, status=202)


def _store_run(hook: Hook, delivery: Delivery, run_id: str, now: datetime, *, status: int,
               **extra: Any) -> ResponseReturnValue:
    """Insert the claimed run (by its chosen id: a second insert of it stores nothing) and answer."""
    store = web_store()
    try:
        web_runs().queue(hook.job, _trigger(hook, delivery, now), data=delivery.payload, run_id=run_id, now=now)
    except SoonerError as exc:
        return json_error(409, f"the run could not be stored: {exc}")  # the claim stays: a redelivery retries
    store.deliveries.mark_accepted(hook.name, delivery.id)
    return _answer(status, run_id, delivery, **extra)


def _duplicate(hook: Hook, delivery: Delivery, earlier: dict, now: datetime) -> ResponseReturnValue:
    store, run_id = web_store(), str(earlier["run"])
    store.deliveries.note_duplicate(hook.name, delivery.id, now=now)
    if earlier.get("state") == ACCEPTED:
        return _answer(200, run_id, delivery, duplicate=True)
    if store.runs.find(run_id) is not None:  # stored, its claim not yet marked
        store.deliveries.mark_accepted(hook.name, delivery.id)
        return _answer(200, run_id, delivery, duplicate=True)
    claimed_at = earlier.get("t")
    if claimed_at is not None and claimed_at.tzinfo is None:
        claimed_at = claimed_at.replace(tzinfo=now.tzinfo)
    if claimed_at is None or now - claimed_at > timedelta(seconds=CLAIM_STALE_S):
        return _store_run(hook, delivery, run_id, now, status=202, duplicate=True)
    return _answer(202, run_id, delivery, duplicate=True)  # the first copy is storing it right now


def _answer(status: int, run_id: str, delivery: Delivery, **extra: Any) -> ResponseReturnValue:
    response = jsonify({"run": run_id, "url": url_for("runs.detail", run_id=run_id, _external=True),
                        "delivery": delivery.id, **extra})
    response.status_code = status
    return response
