"""``/settings/hooks``: the webhooks (list, create, delete) and each hook's delivery log, for admins.

The receiver itself is ``POST /hooks/<provider>/<hook>`` (:mod:`sooner.webapp.hooks`); these pages live
under ``/settings`` so their URLs can never be taken for a delivery. A hook is made by the same rule as
``sooner hook add`` (:meth:`sooner.store.webhooks.HookRepo.create`); its secret, given or generated, is
shown in the answer to the form only (never stored in the session, ``Cache-Control: no-store``). Forms
carry the CSRF token (checked app-wide by :mod:`sooner.webapp.auth`).
"""

from __future__ import annotations

import logging

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from sooner.errors import JobNotFound
from sooner.model.webhook import PROVIDERS, Hook, InvalidHook
from sooner.store.webhooks import LOG_KEEP, HookExists
from sooner.webapp.context import admin_required, user_name, web_store

logger = logging.getLogger(__name__)

bp = Blueprint("hooks_ui", __name__, url_prefix="/settings/hooks")

MAX_LIST_ITEMS = 50  # events or branches per hook, as typed into the form


def split_list(text: str) -> tuple[str, ...]:
    """Events or branches as typed: separated by commas or new lines (an event name may hold a space)."""
    items = [item.strip() for line in (text or "").splitlines() for item in line.split(",")]
    return tuple(dict.fromkeys(item for item in items if item))


def _page(status: int = 200, *, error: str | None = None, created: Hook | None = None, secret: str | None = None,
          form: dict[str, str] | None = None) -> ResponseReturnValue:
    store = web_store()
    page = render_template("hooks.html", section="hooks", hooks=store.hooks.all(), providers=PROVIDERS,
                           jobs=[j.name for j in store.jobs.list()], error=error, created=created, secret=secret,
                           form=form or {})
    return page, status, {"Cache-Control": "no-store"}


@bp.get("/")
@admin_required
def index() -> ResponseReturnValue:
    """Every hook with the URL its provider posts to, and the form that makes one."""
    return _page()


@bp.post("/")
@admin_required
def create() -> ResponseReturnValue:
    """Make a hook; the answer shows its secret once."""
    form = {key: request.form.get(key, "")[:2000] for key in ("provider", "name", "job", "events", "branches")}
    secret = request.form.get("secret", "").strip()
    if len(split_list(form["events"])) > MAX_LIST_ITEMS or len(split_list(form["branches"])) > MAX_LIST_ITEMS:
        return _page(400, error=f"at most {MAX_LIST_ITEMS} events and {MAX_LIST_ITEMS} branches", form=form)
    try:
        hook = web_store().hooks.create(form["provider"], form["name"].strip(), form["job"].strip(),
                                        secret=secret or None, events=split_list(form["events"]),
                                        branches=split_list(form["branches"]), by=user_name())
    except (InvalidHook, HookExists) as exc:
        return _page(400, error=str(exc), form=form)
    except JobNotFound:
        return _page(400, error=f"no job named {form['job'][:200]!r}", form=form)
    logger.info("hook %s (%s) for %s made by %s", hook.name, hook.provider, hook.job, user_name())
    return _page(201, created=hook, secret=hook.secret)


@bp.post("/<name>/delete")
@admin_required
def delete(name: str) -> ResponseReturnValue:
    """Remove the hook and its delivery log (runs it started stay)."""
    if not web_store().hooks.remove(name):
        abort(404, f"no hook named {name[:64]!r}")
    logger.info("hook %s removed by %s", name, user_name())
    flash(f"Removed hook {name}")
    return redirect(url_for(".index"))


@bp.get("/<name>")
@admin_required
def deliveries(name: str) -> ResponseReturnValue:
    """The hook's newest deliveries (at most the log's ``LOG_KEEP``), newest first."""
    store = web_store()
    hook = store.hooks.get(name)
    if hook is None:
        abort(404, f"no hook named {name[:64]!r}")
    return render_template("hook_deliveries.html", section="hooks", hook=hook,
                           deliveries=store.deliveries.log(hook.name, LOG_KEEP), keep=LOG_KEEP)
