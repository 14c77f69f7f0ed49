"""What views share: the app's state, the signed-in user, role checks and JSON errors.

Blueprints (the queue browser too) use these instead of reaching into
``current_app`` themselves::

    from sooner.webapp.context import admin_required, current_user, web_store

    @bp.post("/things/<name>/delete")
    @admin_required
    def delete(name): ...
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from flask import Response, current_app, g, jsonify, request

if TYPE_CHECKING:
    from sooner.config import Settings
    from sooner.runs.service import RunService
    from sooner.store import Store
    from sooner.webapp.throttle import AuthThrottle
    from sooner.webapp.live import LiveHub
    from sooner.webapp.stats import FireCache, RunStats

F = TypeVar("F", bound=Callable[..., Any])

EXTENSION = "sooner"


@dataclass
class WebState:
    """Everything one web app instance holds: settings, store, run service, caches, the live hub and the
    sign-in throttle.

    ``runs`` is the one way the web changes a run (start, cancel, emit);
    ``store.clock`` is the web's time, so a test's fake clock reaches the pages (and the throttle) too.
    """

    settings: Settings
    store: Store
    runs: RunService
    stats: RunStats
    fires: FireCache
    hub: LiveHub | None = None
    throttle: AuthThrottle | None = None  # made by sooner.webapp.auth.register()
    owns_store: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def web_state() -> WebState:
    return current_app.extensions[EXTENSION]


def web_store() -> Store:
    return web_state().store


def web_runs() -> RunService:
    """The app's run service: what starts, cancels and ends runs, and emits events."""
    return web_state().runs


def web_now() -> datetime:
    """Now, from the store's clock (aware UTC)."""
    return web_state().store.clock.now()


def current_user() -> dict | None:
    """The signed-in user document (without its hash), or None."""
    return g.get("user")


def user_name() -> str:
    """The signed-in user's name (views run only after the auth guard let a user in)."""
    user = current_user()
    if user is None:
        raise RuntimeError("no signed-in user: the auth guard should have refused this request")
    return user["_id"]


def api_token_id() -> str | None:
    """The id of the API token the request came with (recorded on the runs it starts), None for a session."""
    grant = (current_user() or {}).get("token")
    if not isinstance(grant, dict) or not grant.get("id"):
        return None
    return str(grant["id"])


def is_admin() -> bool:
    user = current_user()
    return bool(user and user.get("role") == "admin")


def wants_json() -> bool:
    """True for the API, XHR/fetch calls and clients that prefer JSON to HTML."""
    if request.path.startswith("/api/") or request.is_json:
        return True
    if request.headers.get("X-Requested-With") == "fetch":
        return True
    best = request.accept_mimetypes.best_match(["text/html", "application/json"])
    return best == "application/json" and request.accept_mimetypes[best] > request.accept_mimetypes["text/html"]


def json_error(status: int, message: str, **extra: Any) -> Response:
    """``{"error": message, …extra}``; under ``/api/v1`` the versioned envelope
    ``{"error": {"code", "message", "details"}}`` (``details`` = ``extra``)."""
    if request.path.startswith("/api/v1/"):
        from werkzeug.http import HTTP_STATUS_CODES

        code = HTTP_STATUS_CODES.get(status, "error").lower().replace(" ", "_").replace("'", "")
        response = jsonify({"error": {"code": code, "message": message, "details": extra.get("details") or extra}})
    else:
        response = jsonify({"error": message, **extra})
    response.status_code = status
    return response


def admin_required(view: F) -> F:
    """Only admins may call the view; others get 403 (JSON or a page)."""
    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not is_admin():
            from sooner.webapp.errors import forbidden

            return forbidden("this needs the admin role")
        return view(*args, **kwargs)
    return wrapper  # type: ignore[return-value]
