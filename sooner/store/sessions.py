"""Web sessions (``sessions``): the server side of a browser's sign-in.

The session cookie carries only a random id (32 bytes as URL-safe text). The
database keeps its SHA-256 as ``_id``: the id is random, so a plain hash is
enough, and a copy of the database signs nobody in. A session is live while it
is younger than its absolute ``expires_at`` and was seen within the idle
lifetime the caller passes in. Ending a session deletes its document; a TTL
index deletes the ones past ``expires_at``, and an idle one goes when it is
next looked up.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sooner.store import schema

if TYPE_CHECKING:
    from sooner.store import Store

ID_BYTES = 32
_MAX_ID_CHARS = 128  # a longer "id" is not one of ours: refused before any hashing or query


def session_key(sid: str) -> str:
    """The ``_id`` under which the session with cookie id ``sid`` is stored."""
    return hashlib.sha256(sid.encode()).hexdigest()


class SessionRepo:
    """Domain operations on ``sessions``: ``_id`` (hash of the id), ``user``, ``epoch``, ``csrf``,
    ``created_at``, ``seen_at``, ``expires_at``.

    ``epoch`` is the user's epoch at sign-in: the web refuses a session whose
    user has moved on (see :class:`~sooner.store.users.UserRepo`).
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self.collection = store.collection(schema.SESSIONS)

    def create(self, user: str, epoch: int, *, max_s: float, now: datetime | None = None) -> tuple[str, dict]:
        """Start a session for ``user``; returns (its id, shown only now: the cookie's; its document)."""
        now = now or self.store.clock.now()
        sid = secrets.token_urlsafe(ID_BYTES)
        document = {"_id": session_key(sid), "user": user, "epoch": epoch, "csrf": secrets.token_urlsafe(32),
                    "created_at": now, "seen_at": now, "expires_at": now + timedelta(seconds=max_s)}
        self.store.retry(lambda: self.collection.insert_one(document))
        return sid, document

    def find_live(self, sid: str, *, idle_s: float, now: datetime | None = None) -> dict | None:
        """The session with id ``sid`` if it is live at ``now``, else None (an expired one is deleted)."""
        if not isinstance(sid, str) or not sid or len(sid) > _MAX_ID_CHARS:
            return None
        key = session_key(sid)
        document = self.store.retry(lambda: self.collection.find_one({"_id": key}))
        if document is None:
            return None
        now = now or self.store.clock.now()
        if now >= document["expires_at"] or (now - document["seen_at"]).total_seconds() >= idle_s:
            self.store.retry(lambda: self.collection.delete_one({"_id": key}))
            return None
        return document

    def touch(self, session: dict, *, now: datetime | None = None, resolution_s: float = 60.0) -> None:
        """Changes ``seen_at`` to ``now``, unless it is younger than ``resolution_s`` (a write per page view is
        more than the idle lifetime needs)."""
        now = now or self.store.clock.now()
        if (now - session["seen_at"]).total_seconds() < resolution_s:
            return
        self.store.retry(lambda: self.collection.update_one({"_id": session["_id"]}, {"$set": {"seen_at": now}}))
        session["seen_at"] = now

    def revoke(self, sid: str) -> bool:
        """End the session with id ``sid``; whether there was one."""
        if not isinstance(sid, str) or not sid or len(sid) > _MAX_ID_CHARS:
            return False
        key = session_key(sid)
        return self.store.retry(lambda: self.collection.delete_one({"_id": key})).deleted_count == 1

    def revoke_user(self, user: str) -> int:
        """End every session of ``user``; returns how many there were."""
        return self.store.retry(lambda: self.collection.delete_many({"user": user})).deleted_count
