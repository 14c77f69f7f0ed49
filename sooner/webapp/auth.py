"""Who may do what: sign-in, sessions, CSRF, API tokens and the account page.

Every request except the login page and static files needs a user: browsers
get one from the signed session cookie (HttpOnly, SameSite=Lax, Secure when
the request came over https), ``/api/`` clients from an ``Authorization:
Bearer`` token and nothing else (so cookies never authorise API calls, which
therefore need no CSRF token). Every other state-changing request must carry
the session's CSRF token in a ``csrf_token`` form field or an
``X-CSRF-Token`` header.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections import defaultdict, deque
from urllib.parse import urlsplit

from flask import (Blueprint, Flask, flash, g, redirect, render_template, request, session, url_for)
from flask.sessions import SecureCookieSessionInterface
from flask.typing import ResponseReturnValue

from sooner.errors import AuthError, SoonerError
from sooner.webapp.context import current_user, json_error, user_name, wants_json, web_store
from sooner.webapp.errors import error_response

bp = Blueprint("auth", __name__)

PUBLIC_ENDPOINTS = {"auth.login", "static", "health"}
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
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


class LoginThrottle:
    """Refuses sign-in for a while after repeated failures for one (address, name)."""

    def __init__(self, failures: int = 5, window_s: float = 300.0) -> None:
        self.failures = failures
        self.window_s = window_s
        self._seen: dict[tuple[str, str], deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def blocked(self, key: tuple[str, str]) -> bool:
        with self._lock:
            times = self._seen.get(key)
            now = time.monotonic()
            while times and now - times[0] > self.window_s:
                times.popleft()
            return times is not None and len(times) >= self.failures

    def failed(self, key: tuple[str, str]) -> None:
        with self._lock:
            self._seen[key].append(time.monotonic())
            if len(self._seen) > 10_000:  # bounded memory under a spray of names
                self._seen.clear()

    def succeeded(self, key: tuple[str, str]) -> None:
        with self._lock:
            self._seen.pop(key, None)


_throttle = LoginThrottle()


def csrf_token() -> str:
    """This session's CSRF token (created on first use)."""
    token = session.get("csrf")
    if not token:
        token = session["csrf"] = secrets.token_urlsafe(32)
    return token


def _public_user(user: dict) -> dict:
    return {k: v for k, v in user.items() if k != "hash"}


def load_user() -> None:
    """Set ``g.user`` from a Bearer token (``/api/``) or the session cookie (everything else)."""
    g.user = None
    g.auth_error = None
    store = web_store()
    if request.path.startswith("/api/"):
        header = request.headers.get("Authorization", "")
        if header[:7].lower() == "bearer ":
            try:
                g.user = _public_user(store.tokens.authenticate(header[7:].strip()))
            except AuthError as exc:
                g.auth_error = str(exc)
        return
    name = session.get("uid")
    if name:
        user = store.users.get(name)
        if user is not None and user.get("epoch") == session.get("epoch"):
            g.user = _public_user(user)
        else:  # user removed, or password/role changed since sign-in
            session.clear()


def guard() -> ResponseReturnValue | None:
    """Refuse anonymous requests and state changes without a valid CSRF token."""
    if request.endpoint in PUBLIC_ENDPOINTS or request.endpoint is None:
        return _check_csrf() if request.endpoint == "auth.login" else None
    if request.path.startswith("/api/"):
        if current_user() is None:
            response = json_error(401, g.auth_error or "authentication required: send 'Authorization: Bearer <token>' "
                                                       "(create one with `sooner token create USER`)")
            response.headers["WWW-Authenticate"] = 'Bearer realm="sooner"'
            return response
        return None
    if current_user() is None:
        if wants_json():
            return json_error(401, "sign in first")
        return redirect(url_for("auth.login", next=_next_target()))
    return _check_csrf()


def _check_csrf() -> ResponseReturnValue | None:
    if request.method in SAFE_METHODS:
        return None
    sent = request.form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER) or ""
    expected = session.get("csrf") or ""
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


@bp.route("/login", methods=["GET", "POST"])
def login() -> ResponseReturnValue:
    store = web_store()
    if request.method != "POST":
        if current_user() is not None:
            return redirect(safe_next(request.args.get("next")))
        return render_template("login.html", no_users=store.users.count() == 0, next=request.args.get("next", ""))
    name = request.form.get("username", "").strip()
    key = (request.remote_addr or "", name)
    if _throttle.blocked(key):
        return render_template("login.html", error="too many failed attempts; wait a few minutes",
                               username=name, next=request.form.get("next", "")), 429
    try:
        user = store.users.authenticate(name, request.form.get("password", ""))
    except AuthError as exc:
        _throttle.failed(key)
        return render_template("login.html", error=str(exc), username=name, next=request.form.get("next", ""),
                               no_users=store.users.count() == 0), 401
    _throttle.succeeded(key)
    session.clear()
    session.permanent = True
    session.update({"uid": user["_id"], "epoch": user.get("epoch"), "csrf": secrets.token_urlsafe(32)})
    return redirect(safe_next(request.form.get("next")))


@bp.post("/logout")
def logout() -> ResponseReturnValue:
    session.clear()
    return redirect(url_for("auth.login"))


@bp.get("/account")
def account() -> ResponseReturnValue:
    tokens = web_store().tokens.list(user_name())
    return render_template("account.html", tokens=tokens, new_token=None)


@bp.post("/account/tokens")
def create_token() -> ResponseReturnValue:
    name = request.form.get("name", "").strip()[:100]
    token, _ = web_store().tokens.create(user_name(), name)
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
    try:
        store.users.authenticate(name, request.form.get("current", ""))
    except AuthError:
        flash("current password is wrong", "error")
        return redirect(url_for("auth.account"))
    new = request.form.get("new", "")
    if new != request.form.get("confirm", ""):
        flash("the new passwords differ", "error")
        return redirect(url_for("auth.account"))
    try:
        store.users.set_password(name, new)
    except SoonerError as exc:
        flash(str(exc), "error")
        return redirect(url_for("auth.account"))
    session["epoch"] = (store.users.get(name) or {}).get("epoch")
    flash("password changed; other sessions are signed out")
    return redirect(url_for("auth.account"))


def register(app: Flask) -> None:
    app.session_interface = SessionInterface()
    app.before_request(load_user)
    app.before_request(guard)
    app.jinja_env.globals["csrf_token"] = csrf_token
    app.register_blueprint(bp)
