"""The live channel's Socket.IO handlers: who may connect, and joining run and dashboard rooms.

A connection authenticates with an API token (the Socket.IO ``auth``
payload ``{token}`` or an ``Authorization: Bearer`` handshake header), checked
by :func:`sooner.webapp.auth.check_token` exactly as the REST API checks it
(same users, same throttle on invalid tokens per address), or else with the
signed-in session cookie. Everything on the channel is a read, which every
role may do. Each join checks the token or session again, so a revoked token
joins nothing more (and what it followed stops).

Refusals say what was wrong and carry a code (README.md, "Live protocol"):
a refused connect is a ``connect_error`` with ``{code, …}`` as its data, a
refused request an ack ``{ok: false, code, error}``. What the rooms receive
is :class:`~sooner.webapp.live.LiveHub`'s business.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from flask import request
from flask_socketio import ConnectionRefusedError as SocketRefused, SocketIO

from sooner.errors import StoreError
from sooner.webapp.live import STORE_DOWN

if TYPE_CHECKING:
    from sooner.webapp.live import LiveHub

logger = logging.getLogger(__name__)

JOIN_LATER = STORE_DOWN + ": join again after store_status {ok: true}"
CONNECT_LATER = STORE_DOWN + ": connect again in a few seconds"
# Error codes of connect_error data and of acks (README.md, "Live protocol").
UNAUTHORIZED, THROTTLED, BAD_REQUEST, NOT_FOUND, STORE_UNAVAILABLE = (
    "unauthorized", "throttled", "bad_request", "not_found", "store_unavailable")


@dataclass(frozen=True)
class Viewer:
    """Who a connection acts for. ``token`` is kept to check again at each join (a revoked token stops there)."""

    user: str
    role: str
    token: str | None = None


class LiveRefusal(Exception):
    """Why a connection or a request on it is refused: a code from README.md's "Live protocol" and a message."""

    def __init__(self, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.code, self.message, self.extra = code, message, extra

    def ack(self) -> dict[str, Any]:
        return {"ok": False, "code": self.code, "error": self.message, **self.extra}

    def refused(self) -> SocketRefused:
        # The client's connect_error carries err.message and err.data.
        return SocketRefused(self.message, {"code": self.code, **self.extra})


NO_CREDENTIALS = ("authentication required: connect with the auth payload {token: '<API token>'} or an "
                  "'Authorization: Bearer <token>' header (create one with `sooner token create USER`), or sign in")


def authenticate(auth: Any) -> Viewer:
    """The viewer a connect request proves; LiveRefusal otherwise.

    A bearer token, from the Socket.IO ``auth`` payload ``{token}`` or the
    handshake's ``Authorization: Bearer`` header, is checked exactly as the
    REST API checks it (same throttle, same users and roles); without one, the
    signed-in session cookie is.
    """
    from sooner.webapp.auth import bearer_token

    if auth is not None and (not isinstance(auth, dict) or not isinstance(auth.get("token", ""), str)):
        raise LiveRefusal(BAD_REQUEST, "the auth payload must be {token: '<API token>'}")
    token = (auth or {}).get("token") or bearer_token(request.headers.get("Authorization"))
    return _viewer(token or None)


def recheck(viewer: Viewer | None) -> None:
    """LiveRefusal unless the viewer's token or session is still valid (checked at every join)."""
    if viewer is None:
        raise LiveRefusal(UNAUTHORIZED, NO_CREDENTIALS)
    again = _viewer(viewer.token)
    if again.user != viewer.user:
        raise LiveRefusal(UNAUTHORIZED, "signed in as someone else: reconnect")


def _viewer(token: str | None) -> Viewer:
    from sooner.webapp.auth import Refusal, check_token, live_session

    if token is not None:
        outcome = check_token(token)
        if isinstance(outcome, Refusal):
            if outcome.status == 429:
                raise LiveRefusal(THROTTLED, outcome.message, retry_after_s=outcome.wait)
            raise LiveRefusal(UNAUTHORIZED, f"{outcome.message}: it may have been revoked; create one with "
                                            f"`sooner token create USER` or on the account page")
        return Viewer(outcome["_id"], outcome.get("role", ""), token)
    found = live_session()
    if found is None:
        raise LiveRefusal(UNAUTHORIZED, NO_CREDENTIALS)
    return Viewer(found[1]["_id"], found[1].get("role", ""))


def _join_request(data: Any) -> tuple[str, int]:
    if not isinstance(data, dict) or not isinstance(data.get("run"), str) or len(data["run"]) > 64:
        raise LiveRefusal(BAD_REQUEST, "join_run takes {run: '<run id>', after_seq: <the last seq you have, or -1>}")
    after = data.get("after_seq", -1)
    if not isinstance(after, int) or isinstance(after, bool):
        raise LiveRefusal(BAD_REQUEST, "after_seq must be an integer (the last seq you have, or -1 for all)")
    return data["run"], max(after, -1)


def register(socketio: SocketIO, hub: LiveHub) -> None:
    """Socket.IO handlers: connections prove a token or a session; clients join run and dashboard rooms."""
    viewers: dict[str, Viewer] = {}

    def sid() -> str:
        return request.sid  # type: ignore[attr-defined]

    def allowed() -> None:
        if not hub.store_ok:
            raise LiveRefusal(STORE_UNAVAILABLE, JOIN_LATER, retry=True)
        try:
            recheck(viewers.get(sid()))
        except LiveRefusal as refusal:
            if refusal.code == UNAUTHORIZED:
                hub.disconnect(sid())  # what it followed stops too
            raise

    def answer(action: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        try:
            allowed()
            return action()
        except LiveRefusal as refusal:
            return refusal.ack()
        except StoreError as exc:
            hub.store_failed(exc)
            return LiveRefusal(STORE_UNAVAILABLE, JOIN_LATER, retry=True).ack()

    @socketio.on("connect")
    def connect(auth: Any = None) -> None:
        try:
            if not hub.store_ok:
                raise LiveRefusal(STORE_UNAVAILABLE, CONNECT_LATER, retry=True)
            try:
                viewers[sid()] = authenticate(auth)
            except StoreError as exc:
                hub.store_failed(exc)
                raise LiveRefusal(STORE_UNAVAILABLE, CONNECT_LATER, retry=True) from None
        except LiveRefusal as refusal:
            logger.info("live: refused a connection from %s: %s", request.remote_addr, refusal.message)
            raise refusal.refused() from None

    @socketio.on("disconnect")
    def disconnect(reason: Any = None) -> None:
        viewers.pop(sid(), None)
        hub.disconnect(sid())

    @socketio.on("join_run")
    def join_run(data: Any) -> dict[str, Any]:
        def join() -> dict[str, Any]:
            run_id, after = _join_request(data)
            result = hub.join_run(sid(), run_id, after)
            if result is None:
                raise LiveRefusal(NOT_FOUND, f"no run with id {run_id!r}")
            return result
        return answer(join)

    @socketio.on("leave_run")
    def leave_run(data: Any = None) -> dict[str, Any]:
        if not isinstance(data, dict) or not isinstance(data.get("run"), str):
            return LiveRefusal(BAD_REQUEST, "leave_run takes {run: '<run id>'}").ack()
        hub.leave_run(sid(), data["run"])
        return {"ok": True}

    @socketio.on("join_dashboard")
    def join_dashboard(data: Any = None) -> dict[str, Any]:
        def join() -> dict[str, Any]:
            hub.join_dashboard(sid())
            return {"ok": True}
        return answer(join)
