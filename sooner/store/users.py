"""Web users and API tokens (``users`` / ``tokens``), with argon2 hashes.

Passwords are hashed with argon2id at argon2-cffi's default cost. API tokens
are 256-bit random secrets shown once; only an argon2 hash of the secret is
stored. Because such a secret cannot be guessed, its hash need not be slow:
tokens use a cheap argon2 setting so that every API request can verify one.
A token reads ``sooner_<id>_<secret>``; ``<id>`` finds the document.
"""

from __future__ import annotations

import builtins
import functools
import re
import secrets
from datetime import datetime, timedelta, timezone
from enum import Enum
from typing import TYPE_CHECKING, Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from pymongo.errors import DuplicateKeyError

from sooner.errors import AuthError, SoonerError
from sooner.model.token import InvalidTokenSetting, TokenGrant, TokenScope, validate_job_glob
from sooner.store import schema
from sooner.store.token_cache import TokenCache

if TYPE_CHECKING:
    from sooner.store import Store

_USER_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
_TOKEN = re.compile(r"^sooner_([0-9a-f]{16})_([A-Za-z0-9_-]{20,100})$")
MIN_PASSWORD_CHARS = 8

_passwords = PasswordHasher()
_token_hasher = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


@functools.cache
def _dummy_hash(hasher: PasswordHasher) -> str:
    """Verified against when a user or token does not exist, so a check takes as long either way."""
    return hasher.hash(secrets.token_urlsafe(32))


class Role(str, Enum):
    """What a web user may do: ``viewer`` reads; ``admin`` also changes jobs, runs and queues."""

    VIEWER = "viewer"
    ADMIN = "admin"


class UserNotFound(SoonerError, LookupError):
    """No web user with the given name exists."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"no web user named {name!r} (see `sooner user list`)")


def validate_user_name(name: str) -> str:
    if not isinstance(name, str) or not _USER_NAME.match(name):
        raise SoonerError(f"invalid user name {name!r}: use 1-64 letters, digits and _ . @ -")
    return name


def validate_password(password: str) -> str:
    if not isinstance(password, str) or len(password) < MIN_PASSWORD_CHARS:
        raise SoonerError(f"password too short: use at least {MIN_PASSWORD_CHARS} characters")
    if len(password) > 1024:
        raise SoonerError("password too long: use at most 1024 characters")
    return password


class UserRepo:
    """Domain operations on ``users``: ``_id`` = name, ``hash``, ``role``, ``epoch``, timestamps.

    ``epoch`` grows with every password or role change, which also deletes the
    user's web sessions (``store.sessions``); a session remembers the epoch it
    began in, and the web refuses it when the two differ, so a session that a
    change raced with ends too.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self.collection = store.collection(schema.USERS)

    def add(self, name: str, password: str, *, admin: bool = False, now: datetime | None = None) -> dict:
        """Create a user (viewer unless ``admin``); SoonerError if the name is taken."""
        validate_user_name(name)
        validate_password(password)
        now = now or self.store.clock.now()
        user = {"_id": name, "hash": _passwords.hash(password), "role": (Role.ADMIN if admin else Role.VIEWER).value,
                "epoch": 1, "created_at": now, "password_changed_at": now, "last_login_at": None}
        try:
            self.store.retry(lambda: self.collection.insert_one(user))
        except DuplicateKeyError:
            raise SoonerError(f"a web user named {name!r} exists already "
                              "(change it with `sooner user passwd`)") from None
        return user

    def get(self, name: str) -> dict | None:
        return self.store.retry(lambda: self.collection.find_one({"_id": name}))

    def list(self) -> builtins.list[dict]:
        return self.store.retry(lambda: list(self.collection.find({}, {"hash": 0}).sort("_id", 1)))

    def count(self) -> int:
        return len(self.store.retry(lambda: list(self.collection.find({}, {"_id": 1}).limit(1000))))

    def remove(self, name: str) -> None:
        """Delete the user, its API tokens and its web sessions."""
        result = self.store.retry(lambda: self.collection.delete_one({"_id": name}))
        if result.deleted_count == 0:
            raise UserNotFound(name)
        self.store.tokens.remove_for_user(name)
        self.store.sessions.revoke_user(name)

    def set_password(self, name: str, password: str) -> int:
        """Changes ``hash``, ``password_changed_at`` and ``epoch``, and ends the user's web sessions
        (returns how many)."""
        validate_password(password)
        self._change(name, {"$set": {"hash": _passwords.hash(password), "password_changed_at": self.store.clock.now()},
                            "$inc": {"epoch": 1}})
        return self.store.sessions.revoke_user(name)

    def set_role(self, name: str, role: Role | str) -> int:
        """Changes ``role`` and ``epoch``, and ends the user's web sessions (returns how many)."""
        self._change(name, {"$set": {"role": Role(role).value}, "$inc": {"epoch": 1}})
        return self.store.sessions.revoke_user(name)

    def authenticate(self, name: str, password: str) -> dict:
        """The user if the password matches, else AuthError (the same message whatever was wrong)."""
        user = self.get(name) if isinstance(name, str) and _USER_NAME.match(name) else None
        try:
            _passwords.verify(user["hash"] if user else _dummy_hash(_passwords), password)
        except (VerificationError, InvalidHashError):
            raise AuthError("wrong user name or password") from None
        if user is None:
            raise AuthError("wrong user name or password")
        fields: dict[str, Any] = {"last_login_at": self.store.clock.now()}
        if _passwords.check_needs_rehash(user["hash"]):
            fields["hash"] = _passwords.hash(password)
        self.store.retry(lambda: self.collection.update_one({"_id": name}, {"$set": fields}))
        return user

    def _change(self, name: str, update: dict) -> None:
        result = self.store.retry(lambda: self.collection.update_one({"_id": name}, update))
        self.store.tokens.forget_cached(user=name)  # the new role (epoch) counts for its tokens at once
        if result.matched_count == 0:
            raise UserNotFound(name)


class TokenRepo:
    """API tokens: ``_id`` (16 hex), ``user``, ``name``, ``hash``, ``created_at``, ``last_used_at``,
    ``last_used_address``, ``scope`` (read/run/admin; missing = admin), ``job`` (a glob, scope run), ``expires_at``.

    The token text is never stored; revoking deletes the document.
    """

    # Writing last_used_at on every request would turn each API read into a write.
    LAST_USED_RESOLUTION_S = 60

    def __init__(self, store: Store) -> None:
        self.store = store
        self.collection = store.collection(schema.TOKENS)
        self.cache: TokenCache | None = None  # only the web process remembers verified tokens

    def cache_verified(self, ttl_s: float) -> None:
        """Remember verified tokens for ``ttl_s`` seconds (0 = never); :mod:`sooner.store.token_cache` says
        how stale that may be."""
        self.cache = TokenCache(self.store.clock, ttl_s) if ttl_s > 0 else None

    def cached(self, token: str, now: datetime | None = None) -> dict | None:
        """The user of a token verified moments ago (within the cache's TTL, unexpired), else None: no reads."""
        cache = self.cache
        return cache.get(token, now or self.store.clock.now()) if cache is not None else None

    def forget_cached(self, *, token_id: str | None = None, user: str | None = None) -> None:
        """Stop trusting a remembered verification of this token, or of this user's tokens, at once."""
        if self.cache is not None:
            self.cache.forget(token_id=token_id, user=user)

    def create(self, user: str, name: str = "", *, now: datetime | None = None, scope: TokenScope | None = None,
               job_glob: str | None = None, expires_in: timedelta | None = None) -> tuple[str, dict]:
        """Make a token for ``user``; returns (the token text, shown only now; its document).

        ``scope`` (default admin: all the user's role allows), ``job_glob`` and ``expires_in`` are
        :mod:`sooner.model.token`'s; a job glob needs scope ``run``.
        """
        if self.store.users.get(user) is None:
            raise UserNotFound(user)
        if job_glob is not None and scope is not TokenScope.RUN:
            raise InvalidTokenSetting("job", "a job glob needs scope 'run'")
        now = now or self.store.clock.now()
        token_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
        document = {"_id": token_id, "user": user, "name": name[:100], "hash": _token_hasher.hash(secret),
                    "created_at": now, "last_used_at": None, "last_used_address": None,
                    "scope": (scope or TokenScope.ADMIN).value,
                    "job": validate_job_glob(job_glob) if job_glob is not None else None,
                    "expires_at": now + expires_in if expires_in is not None else None}
        self.store.retry(lambda: self.collection.insert_one(document))
        return f"sooner_{token_id}_{secret}", document

    def list(self, user: str | None = None) -> builtins.list[dict]:
        query = {"user": user} if user else {}
        return self.store.retry(lambda: list(self.collection.find(query, {"hash": 0}).sort("created_at", 1)))

    def revoke(self, token_id: str, *, user: str | None = None) -> None:
        """Delete a token (only ``user``'s, when given); SoonerError if there is none."""
        query: dict[str, Any] = {"_id": token_id}
        if user:
            query["user"] = user
        deleted = self.store.retry(lambda: self.collection.delete_one(query)).deleted_count
        self.forget_cached(token_id=token_id)
        if deleted == 0:
            raise SoonerError(f"no API token with id {token_id!r} (see `sooner token list`)")

    def remove_for_user(self, user: str) -> None:
        self.store.retry(lambda: self.collection.delete_many({"user": user}))
        self.forget_cached(user=user)

    def authenticate(self, token: str, now: datetime | None = None, *, address: str | None = None) -> dict:
        """The user owning a valid, unexpired token, else AuthError; the user's ``token`` is its
        :class:`~sooner.model.token.TokenGrant` as a dict (``TokenGrant.from_doc`` reads it back).

        Records ``last_used_at`` and ``last_used_address`` at most once a minute per token. With the cache
        on (:meth:`cache_verified`), a token verified within its TTL is answered from memory.
        """
        if (hit := self.cached(token, now)) is not None:
            return hit
        ticket = self.cache.ticket() if self.cache is not None else 0
        match = _TOKEN.match(token or "")
        document = self.store.retry(lambda: self.collection.find_one({"_id": match.group(1)})) if match else None
        try:
            _token_hasher.verify(document["hash"] if document else _dummy_hash(_token_hasher),
                                 match.group(2) if match else "")
        except (VerificationError, InvalidHashError):
            raise AuthError("invalid API token") from None
        user = self.store.users.get(document["user"]) if document else None
        if document is None or user is None:
            raise AuthError("invalid API token")
        now = now or self.store.clock.now()
        grant = TokenGrant.from_doc(document)
        if grant.expired(now):
            raise AuthError(f"API token {grant.id} expired at {grant.expires_at:%Y-%m-%d %H:%M} UTC")
        last = document.get("last_used_at")
        if last is not None and last.tzinfo is None:
            last = last.replace(tzinfo=timezone.utc)
        if last is None or (now - last).total_seconds() > self.LAST_USED_RESOLUTION_S:
            fields = {"last_used_at": now, "last_used_address": (address or "")[:64] or None}
            self.store.retry(lambda: self.collection.update_one({"_id": document["_id"]}, {"$set": fields}))
        verified = {**user, "token": grant.to_doc()}
        if self.cache is not None:
            self.cache.put(ticket, token, verified)
        return verified

