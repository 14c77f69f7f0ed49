"""Flask app factory, views, Socket.IO handlers and the REST API.

``create_app(settings, store=None)`` returns ``(app, socketio)``;
:func:`sooner.webapp.server.serve` runs them with gunicorn. Blueprints:
``auth`` (login, account, tokens), ``views`` (dashboard, workers, events,
deploys), ``jobs``, ``runs``, ``api``, ``v1`` (the versioned REST API, :mod:`sooner.webapp.v1`), ``failed`` (the Failed view, page and API), ``hooks``/``signed``/``badges`` (webhooks, signed trigger URLs,
badges: no session, see ``auth.PUBLIC_ENDPOINTS``) and, when present, ``queues`` (module
``sooner.webapp.queues`` exposing ``bp``; it finds shared helpers in
:mod:`sooner.webapp.context`, extends ``base.html`` and may add
``static/queues.css``/``queues.js`` through the ``head``/``scripts`` blocks).
Views read through ``store.reads`` (the store owns every query) and change
runs only through the app's :class:`~sooner.runs.service.RunService`
(``web_state().runs``). Every route needs a signed-in user (see
:mod:`sooner.webapp.auth`); POSTs need the CSRF token (``{{ csrf_token() }}``
in forms, ``X-CSRF-Token`` for fetch).
"""

from __future__ import annotations

import importlib
import logging
import secrets
from datetime import date, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from flask import Flask, Response
from flask.json.provider import DefaultJSONProvider
from flask_socketio import SocketIO

from sooner import __version__
from sooner.resources import resource_dir

if TYPE_CHECKING:
    from sooner.config import Settings
    from sooner.store import Store

logger = logging.getLogger(__name__)

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


class JSONProvider(DefaultJSONProvider):
    """JSON with ISO-8601 UTC datetimes and ObjectIds as strings."""

    @staticmethod
    def default(o: Any) -> Any:
        if isinstance(o, datetime):
            moment = o if o.tzinfo else o.replace(tzinfo=timezone.utc)
            return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
        if isinstance(o, date):
            return o.isoformat()
        from bson import ObjectId

        if isinstance(o, ObjectId):
            return str(o)
        return DefaultJSONProvider.default(o)


def create_app(settings: Settings, store: Store | None = None, *, trusted_proxies: int | None = None,
               secure_cookies: bool | None = None, live: bool = True) -> tuple[Flask, SocketIO]:
    """Build the web app for ``settings`` (opening the store unless one is given).

    ``trusted_proxies`` (default: setting ``web_trusted_proxies``, else 0) is how
    many reverse proxies' ``X-Forwarded-*`` headers to believe; ``secure_cookies``
    forces the Secure cookie flag (it is set anyway on https requests). With
    ``live=False`` the live hub never starts its own thread: tests call
    ``hub.tick()`` themselves.
    """
    from sooner.runs.service import RunService
    from sooner.webapp import api, auth, errors, failed, formatting, jobs, live as live_module, live_socket, runs, views
    from sooner.webapp.context import EXTENSION, WebState
    from sooner.webapp.stats import FireCache, RunStats

    owns_store = store is None
    if store is None:
        from sooner.store import open_store

        store = open_store(settings)
    web = resource_dir("web")
    app = Flask("sooner.webapp", template_folder=str(web / "templates"), static_folder=str(web / "static"),
                static_url_path="/static")
    app.json = JSONProvider(app)
    app.config.update(
        SECRET_KEY=settings.secret_key or _ephemeral_secret(),
        SESSION_COOKIE_NAME="sooner_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=bool(secure_cookies if secure_cookies is not None
                                   else getattr(settings, "web_secure_cookies", False)),
        # The browser drops the cookie at the session's absolute end; the server enforces both lifetimes.
        PERMANENT_SESSION_LIFETIME=timedelta(seconds=settings.web_session_max_s),
        MAX_CONTENT_LENGTH=4 * 1024 * 1024,
        SEND_FILE_MAX_AGE_DEFAULT=3600,
        TEMPLATES_AUTO_RELOAD=False,
    )
    state = WebState(settings=settings, store=store, runs=RunService(store, settings), stats=RunStats(store),
                     fires=FireCache(), owns_store=owns_store)
    app.extensions[EXTENSION] = state
    formatting.register(app)
    errors.register(app)
    auth.register(app)
    for module in (views, jobs, runs, api, failed):
        app.register_blueprint(module.bp)
    from sooner.webapp import badges, hooks, signed

    for module in (hooks, signed, badges):  # webhooks, signed trigger URLs, status badges: no session needed
        app.register_blueprint(module.bp)
    app.register_blueprint(failed.api_bp)
    from sooner.webapp import poison

    app.register_blueprint(poison.bp)  # the poison list page (its API is in v1)
    from sooner.webapp import admin_users, hooks_ui, v1

    v1.register(app)
    app.register_blueprint(admin_users.bp)
    app.register_blueprint(hooks_ui.bp)
    from sooner.webapp import metrics

    app.register_blueprint(metrics.bp)  # /metrics for Prometheus (token or session)
    app.jinja_env.globals.update(version=__version__, has_queues=_register_optional(app, "queues"))
    app.after_request(_security_headers)

    socketio = SocketIO(app, async_mode="threading", cors_allowed_origins=None, ping_interval=20, ping_timeout=20,
                        max_http_buffer_size=100_000, json=app.json)
    hub = live_module.LiveHub(socketio, store, settings)
    hub.autostart = live  # type: ignore[attr-defined]
    state.hub = hub
    live_socket.register(socketio, hub)
    hops = trusted_proxies if trusted_proxies is not None else int(getattr(settings, "web_trusted_proxies", 0) or 0)
    if hops > 0:
        from werkzeug.middleware.proxy_fix import ProxyFix

        # Outermost, so Socket.IO requests see the client's scheme and host too.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops, x_port=hops,  # type: ignore
                                x_prefix=hops)
    return app, socketio


def _register_optional(app: Flask, name: str) -> bool:
    """Register ``sooner.webapp.<name>.bp`` if that module exists (built separately)."""
    try:
        module = importlib.import_module(f"sooner.webapp.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"sooner.webapp.{name}":
            raise
        return False
    blueprint = getattr(module, "bp", None)
    if blueprint is None:
        return False
    app.register_blueprint(blueprint)
    return True


def _security_headers(response: Response) -> Response:
    headers = response.headers
    headers.setdefault("Content-Security-Policy", CSP)
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("Referrer-Policy", "same-origin")
    if response.mimetype == "text/html":
        headers.setdefault("Cache-Control", "no-store")
    return response


def _ephemeral_secret() -> str:
    logger.warning("no secret_key configured: web sessions end when the server restarts "
                   "(`sooner init` writes one into config.json)")
    return secrets.token_urlsafe(32)
