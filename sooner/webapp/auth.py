"""Who may do what: sign-in, sessions, throttling, CSRF, API tokens and the account page.

Every request except the login page, ``/healthz`` and static files needs a
user. ``/api/`` clients prove who they are with an ``Authorization: Bearer``
token, and those calls need no CSRF token. A token's scope (:mod:`sooner.model.token`)
narrows its user's role: :func:`token_denial` is the check, called for ``/api`` here and by
each ``/api/v1`` view. Cookies never authorise ``/api`` calls; ``/api/v1`` also accepts the
signed-in session (for the UI), and then state changes need the CSRF token as any form does.
Socket.IO connections may send the same token (:func:`check_token`, see :mod:`sooner.webapp.live_socket`). Browsers use a session cookie (HttpOnly, SameSite=Lax,
Secure when the request came over https). Every other state-changing request
must carry the session's CSRF token, in a ``csrf_token`` form field or an
``X-CSRF-Token`` header.

Sessions live in the database (:mod:`sooner.store.sessions`), and the cookie
carries only the session's random id. Each request, and each Socket.IO
connect, finds the session and checks three things: the idle lifetime
(``web_session_idle_s``), the absolute one (``web_session_max_s``), and that
the user's ``epoch`` is still the one the session began with. Signing out ends
the session. A password or role change ends all of the user's sessions.

Throttling (:class:`~sooner.webapp.throttle.AuthThrottle`, one per app)
bounds hash work and backs failures off exponentially; see
:mod:`sooner.webapp.throttle`.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import math
import secrets
from dataclasses import dataclass
from typing import Iterable
from urllib.parse import urlsplit

from flask import (Blueprint, Flask, flash, g, redirect, render_template, request, session, url_for)
from flask.sessions import SecureCookieSessionInterface
from flask.typing import ResponseReturnValue

from sooner.errors import AuthError, SoonerError
from sooner.model.token import ApiAction, InvalidTokenSetting, TokenGrant, TokenScope, parse_expiry
from sooner.webapp.context import current_user, json_error, user_name, wants_json, web_state, web_store
from sooner.webapp.errors import error_response
from sooner.webapp.throttle import AuthThrottle

logger = logging.getLogger(__name__)

bp = Blueprint("auth", __name__)

# Signed requests (webhooks, signed trigger URLs) need no session or CSRF token; badges check the
# job's public_badge setting themselves.
PUBLIC_ENDPOINTS = {"auth.login", "static", "views.health", "hooks.receive", "signed.trigger", "badges.badge"}
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
METRICS_PATH = "/metrics"  # Prometheus' default path
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"


class SessionInterface(SecureCookieSessionInterface):
    """Marks the session cookie Secure when configured, or when the request itself is https.

    Behind a TLS-terminating proxy, ``request.is_secure`` is true only when the
    proxy's ``X-Forwarded-Proto`` is trusted (``web_trusted_proxies``).
    """

    def get_cookie_secure(self, app: Flask) -> bool:
        from flask import has_request_context

        return bool(app.config["SESSION_COOKIE_SECURE"]) or (has_request_context() and request.is_secure)


def web_throttle() -> AuthThrottle:
    throttle = web_state().throttle
    if throttle is None:
        raise RuntimeError("the auth throttle is made by sooner.webapp.auth.register()")
    return throttle


def client_address() -> str:
    """The client's address as throttles count it; an IPv6 address by its /64, which one host usually holds."""
    text = request.remote_addr or ""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return text[:64]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network(f"{address}/64", strict=False))
    return str(address)


def retry_after(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))


# -- sessions ---------------------------------------------------------------------------------------

def csrf_token() -> str:
    """This session's CSRF token: the signed-in session's, else one kept in the anonymous cookie."""
    web_session = g.get("web_session")
    if web_session is not None:
        return web_session["csrf"]
    token = session.get("csrf")
    if not token:
        token = session["csrf"] = secrets.token_urlsafe(32)
    return token


def _public_user(user: dict) -> dict:
    return {k: v for k, v in user.items() if k != "hash"}


def live_session() -> tuple[dict, dict] | None:
    """(session, user) for the request's cookie if the session is live and the user's epoch still matches."""
    sid = session.get("sid")
    if not sid:
        return None
    state = web_state()
    store, idle_s = state.store, state.settings.web_session_idle_s
    now = store.clock.now()
    document = store.sessions.find_live(sid, idle_s=idle_s, now=now)
    if document is None:
        return None
    user = store.users.get(document["user"])
    if user is None or user.get("epoch") != document.get("epoch"):  # a change raced with this session
        store.sessions.revoke(sid)
        return None
    store.sessions.touch(document, now=now, resolution_s=min(60.0, idle_s / 10))
    return document, user


def start_session(user: dict) -> None:
    """Sign ``user`` in with a new session (a session id from before sign-in is never kept)."""
    state = web_state()
    if session.get("sid"):
        state.store.sessions.revoke(session["sid"])
    sid, document = state.store.sessions.create(user["_id"], user.get("epoch", 1),
                                                max_s=state.settings.web_session_max_s)
    session.clear()
    session.permanent = True
    session["sid"] = sid
    g.web_session, g.user = document, _public_user(user)


def load_user() -> None:
    """Set ``g.user`` from a Bearer token (``/api/``) or the session cookie (everything else)."""
    g.user = g.web_session = g.auth_error = g.retry_after = None
    if takes_token(request.path):
        token = bearer_token(request.headers.get("Authorization"))
        if token is not None:
            _authenticate_token(token)
        if token is not None or not _takes_session_too(request.path) or "Authorization" in request.headers:
            return
    found = live_session()  # /api/v1 also serves the signed-in UI (with CSRF on state changes)
    if found is not None:
        g.web_session, user = found
        g.user = _public_user(user)
    elif session.get("sid"):  # ended, expired, or the user changed or was removed
        session.clear()


def _authenticate_token(token: str) -> None:
    outcome = check_token(token)
    if isinstance(outcome, Refusal):
        g.auth_error, g.retry_after = outcome.message, outcome.wait
    else:
        g.user = outcome


def takes_token(path: str) -> bool:
    """Whether ``path`` is read by programs with an API token (the APIs and ``/metrics``): refusals are 401s."""
    return path.startswith("/api/") or path == METRICS_PATH


def _takes_session_too(path: str) -> bool:
    # /api/v1 and /metrics also serve a signed-in browser; the old /api is for tokens only.
    return path.startswith("/api/v1/") or path == METRICS_PATH


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None for any other header."""
    if header and header[:7].lower() == "bearer ":
        return header[7:].strip()
    return None


def check_token(token: str) -> dict | Refusal:
    """The API token's user (without its hash), else a :class:`Refusal`: 401 invalid, 429 throttled or busy.

    The one token check of the REST API and the Socket.IO channel: invalid tokens back off per address.
    A token this process verified within ``web_token_cache_s`` is answered from memory
    (:mod:`sooner.store.token_cache`: no read, no argon2, no hash slot).
    """
    throttle, address = web_throttle(), client_address()
    if (wait := throttle.token_wait(address)) > 0:
        return Refusal(429, f"too many invalid API tokens from this address: try again in {retry_after(wait)} s", wait)
    tokens = web_store().tokens
    if (user := tokens.cached(token)) is not None:  # verified moments ago: no hash work, so no slot needed
        return _public_user(user)
    if not throttle.token_slots.try_acquire():
        return Refusal(429, "the server is busy checking other API tokens: try again in a second", 1.0)
    try:
        return _public_user(tokens.authenticate(token, address=address))
    except AuthError as exc:
        throttle.token_failed(address)
        return Refusal(401, str(exc))
    finally:
        throttle.token_slots.release()


def guard() -> ResponseReturnValue | None:
    """Refuse anonymous requests and state changes without a valid CSRF token."""
    if request.endpoint in PUBLIC_ENDPOINTS or request.endpoint is None:
        return _check_csrf() if request.endpoint == "auth.login" else None
    if takes_token(request.path):
        if current_user() is None:
            return _api_refusal()
        if g.web_session is not None:
            return _check_csrf()
        return None if request.path.startswith("/api/v1/") else _old_api_scope_refusal()
    if current_user() is None:
        if wants_json():
            return json_error(401, "sign in first")
        return redirect(url_for("auth.login", next=_next_target()))
    return _check_csrf()


def token_denial(action: ApiAction, jobs: Iterable[str] = ()) -> str | None:
    """Why the request's API token may not do ``action`` on ``jobs`` (:meth:`TokenGrant.denial`), else None.

    None for requests without a token (signed-in sessions): their role alone decides.
    """
    user = current_user()
    grant = user.get("token") if user else None
    return TokenGrant.from_doc(grant).denial(action, jobs) if grant else None


def _old_api_scope_refusal() -> ResponseReturnValue | None:
    """The token scope check of the ``/api`` endpoints (``/api/v1`` views call :func:`token_denial` themselves)."""
    if request.method in SAFE_METHODS:
        return None
    args, store = request.view_args or {}, web_store()
    jobs: list[str] = []
    if request.endpoint == "api.start_run":
        action, jobs = ApiAction.RUN, [args.get("name", "")]
    elif request.endpoint == "api.cancel":
        action, jobs = ApiAction.RUN, [store.runs.get(args.get("run_id", "")).job]
    elif request.endpoint == "api.emit_event":
        action, jobs = ApiAction.RUN, [job.name for job in store.jobs.with_hook(args.get("name", ""))]
    else:
        action = ApiAction.ADMIN
    denial = token_denial(action, jobs)
    return json_error(403, denial) if denial else None


def _api_refusal() -> ResponseReturnValue:
    if g.retry_after:
        response = json_error(429, g.auth_error)
        response.headers["Retry-After"] = retry_after(g.retry_after)
        return response
    response = json_error(401, g.auth_error or "authentication required: send 'Authorization: Bearer <token>' "
                                               "(create one with `sooner token create USER`)")
    response.headers["WWW-Authenticate"] = 'Bearer realm="sooner"'
    return response


def _check_csrf() -> ResponseReturnValue | None:
    if request.method in SAFE_METHODS:
        return None
    sent = request.form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER) or ""
    web_session = g.get("web_session")
    expected = (web_session["csrf"] if web_session is not None else session.get("csrf")) or ""
    if not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
        return error_response(400, "CSRF token missing or invalid: reload the page and try again")
    return None


def _next_target() -> str:
    path = request.full_path if request.query_string else request.path
    return path if request.method == "GET" else url_for("views.dashboard")


def safe_next(target: str | None) -> str:
    """Only same-site paths are followed after sign-in (no open redirects)."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return url_for("views.dashboard")
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return url_for("views.dashboard")
    return target


# -- routes -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Refusal:
    """Why a password was not checked or not accepted: 401 (wrong) or 429 (throttled, busy: ``wait`` s)."""

    status: int
    message: str
    wait: float | None = None

    def headers(self) -> dict[str, str]:
        return {"Retry-After": retry_after(self.wait)} if self.wait is not None else {}


BUSY = "the server is busy checking other sign-ins: try again in a moment"


def check_password(name: str, password: str) -> dict | Refusal:
    """The user if ``password`` is ``name``'s, else a :class:`Refusal`; throttled per address and account."""
    throttle, address = web_throttle(), client_address()
    if (wait := throttle.login_wait(address, name)) > 0:
        return Refusal(429, f"too many failed attempts: try again in {retry_after(wait)} s", wait)
    if not throttle.password_slots.try_acquire():
        return Refusal(429, BUSY, 1.0)
    try:
        # Again with the slot held: attempts that queued for a slot meanwhile must not all be checked.
        if (wait := throttle.login_wait(address, name)) > 0:
            return Refusal(429, f"too many failed attempts: try again in {retry_after(wait)} s", wait)
        user = web_store().users.authenticate(name, password)
    except AuthError as exc:
        throttle.login_failed(address, name)
        return Refusal(401, str(exc))
    finally:
        throttle.password_slots.release()
    throttle.login_succeeded(address, name)
    return user


@bp.route("/login", methods=["GET", "POST"])
def login() -> ResponseReturnValue:
    store = web_store()
    if request.method != "POST":
        if current_user() is not None:
            return redirect(safe_next(request.args.get("next")))
        return render_template("login.html", no_users=store.users.count() == 0, next=request.args.get("next", ""))
    name = request.form.get("username", "").strip()
    outcome = check_password(name, request.form.get("password", ""))
    if isinstance(outcome, Refusal):
        page = render_template("login.html", error=outcome.message, username=name, next=request.form.get("next", ""),
                               no_users=outcome.status == 401 and store.users.count() == 0)
        return page, outcome.status, outcome.headers()
    start_session(outcome)
    return redirect(safe_next(request.form.get("next")))


@bp.post("/logout")
def logout() -> ResponseReturnValue:
    sid = session.get("sid")
    if sid:
        web_store().sessions.revoke(sid)
    session.clear()
    return redirect(url_for("auth.login"))


@bp.get("/account")
def account() -> ResponseReturnValue:
    tokens = web_store().tokens.list(user_name())
    return render_template("account.html", tokens=tokens, new_token=None)


@bp.post("/account/tokens")
def create_token() -> ResponseReturnValue:
    name = request.form.get("name", "").strip()[:100]
    glob, expires = request.form.get("job", "").strip(), request.form.get("expires", "").strip()
    try:
        scope = TokenScope.parse(request.form.get("scope") or "admin")
        token, _ = web_store().tokens.create(user_name(), name, scope=scope, job_glob=glob or None,
                                             expires_in=parse_expiry(expires) if expires else None)
    except InvalidTokenSetting as exc:
        tokens = web_store().tokens.list(user_name())
        return render_template("account.html", tokens=tokens, new_token=None, token_error=str(exc)), 400
    tokens = web_store().tokens.list(user_name())
    # Shown once, in this response only; never stored in the session.
    response = render_template("account.html", tokens=tokens, new_token=token)
    return response, 201, {"Cache-Control": "no-store"}


@bp.post("/account/tokens/<token_id>/revoke")
def revoke_token(token_id: str) -> ResponseReturnValue:
    web_store().tokens.revoke(token_id, user=user_name())
    flash("API token revoked")
    return redirect(url_for("auth.account"))


@bp.post("/account/password")
def change_password() -> ResponseReturnValue:
    store = web_store()
    name = user_name()
    outcome = check_password(name, request.form.get("current", ""))
    if isinstance(outcome, Refusal):
        flash("current password is wrong" if outcome.status == 401 else outcome.message, "error")
        return redirect(url_for("auth.account"))
    new = request.form.get("new", "")
    if new != request.form.get("confirm", ""):
        flash("the new passwords differ", "error")
        return redirect(url_for("auth.account"))
    slots = web_throttle().password_slots
    if not slots.try_acquire():
        flash(BUSY, "error")
        return redirect(url_for("auth.account"))
    try:
        store.users.set_password(name, new)  # ends every session of the user, this one too
    except SoonerError as exc:
        flash(str(exc), "error")
        return redirect(url_for("auth.account"))
    finally:
        slots.release()
    start_session(store.users.get(name) or outcome)
    flash("password changed; other sessions are signed out")
    return redirect(url_for("auth.account"))


def register(app: Flask) -> None:
    from sooner.webapp.context import EXTENSION

    state = app.extensions[EXTENSION]
    state.throttle = AuthThrottle(state.store.clock)
    state.store.tokens.cache_verified(state.settings.web_token_cache_s)  # see sooner.store.token_cache
    app.session_interface = SessionInterface()
    app.before_request(load_user)
    app.before_request(guard)
    app.jinja_env.globals["csrf_token"] = csrf_token
    app.register_blueprint(bp)
