"""Verified API tokens, remembered briefly, so a polling client costs no token read and no argon2 verify.

The web process turns it on (:meth:`sooner.store.users.TokenRepo.cache_verified`, setting
``web_token_cache_s``, default 10 s, 0 = off); other processes never cache. An entry is
(sha256 of the token text → the user document with its grant, the token id, when it was verified).
Within the TTL a request with that token reads nothing; after it, the next request verifies again
in full (token and user read, argon2), which also refreshes ``last_used_at`` at most once a minute.

Staleness bound: a revocation, a user's removal, or a password or role change (the ``epoch``) made
by **another** process is honoured by this process within the TTL; made through this process's
store it is honoured at once (:meth:`TokenCache.forget`). Expiry is checked on every hit, with the
clock. Failed verifications are never cached. A verification that raced with a change (it read the
token before a revocation in this process) is not remembered: :meth:`ticket` / :meth:`put`.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sooner.model.token import TokenGrant

if TYPE_CHECKING:
    from sooner.clock import Clock

DEFAULT_CAPACITY = 1000


@dataclass(frozen=True)
class _Entry:
    user: dict[str, Any]  # the user document with "token": the grant as a dict
    token_id: str
    user_name: str
    grant: TokenGrant
    verified_at: float  # clock.monotonic()


class TokenCache:
    """A thread-safe LRU of at most ``capacity`` verified tokens, each trusted for ``ttl_s`` seconds."""

    def __init__(self, clock: Clock, ttl_s: float, capacity: int = DEFAULT_CAPACITY) -> None:
        self.clock = clock
        self.ttl_s = ttl_s
        self.capacity = capacity
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self._generation = 0  # moves on every forget(): a verification begun before it is not remembered

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def key(token: str) -> bytes:
        # A digest, so the cache never holds a token's text.
        return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()

    def get(self, token: str, now: datetime) -> dict[str, Any] | None:
        """A copy of the user of ``token`` if it was verified within the TTL and has not expired by ``now``."""
        key = self.key(token)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if self.clock.monotonic() - entry.verified_at >= self.ttl_s or entry.grant.expired(now):
                del self._entries[key]  # the full check says why (expired) or verifies it again
                return None
            self._entries.move_to_end(key)
            return dict(entry.user)

    def ticket(self) -> int:
        """Take one before reading the token, and hand it to :meth:`put`."""
        with self._lock:
            return self._generation

    def put(self, ticket: int, token: str, user: dict[str, Any]) -> None:
        """Remember a token just verified; ignored if something was forgotten since ``ticket`` was taken."""
        grant = TokenGrant.from_doc(user["token"])
        entry = _Entry(dict(user), grant.id, str(user["_id"]), grant, self.clock.monotonic())
        key = self.key(token)
        with self._lock:
            if ticket != self._generation:
                return
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)

    def forget(self, *, token_id: str | None = None, user: str | None = None) -> None:
        """Drop the entries of this token, or of every token of this user (revoked, removed, epoch changed)."""
        with self._lock:
            self._generation += 1
            for key in [k for k, e in self._entries.items() if e.token_id == token_id or e.user_name == user]:
                del self._entries[key]
