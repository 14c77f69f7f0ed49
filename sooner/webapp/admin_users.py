"""``/admin/users``: every web user with its role and API tokens, for admins; tokens can be revoked here.

Users and roles are still made and changed with the CLI (``sooner user …``); this page shows them
and revokes anyone's token (CSRF like every form).
"""

from __future__ import annotations

from flask import Blueprint, flash, redirect, render_template, url_for
from flask.typing import ResponseReturnValue

from sooner.webapp.context import admin_required, web_store

bp = Blueprint("admin_users", __name__, url_prefix="/admin")


@bp.get("/users")
@admin_required
def users() -> ResponseReturnValue:
    store = web_store()
    tokens: dict[str, list[dict]] = {}
    for token in store.tokens.list():
        tokens.setdefault(token["user"], []).append(token)
    return render_template("admin_users.html", users=store.users.list(), tokens=tokens)


@bp.post("/tokens/<token_id>/revoke")
@admin_required
def revoke_token(token_id: str) -> ResponseReturnValue:
    web_store().tokens.revoke(token_id)
    flash(f"API token {token_id} revoked")
    return redirect(url_for("admin_users.users"))
