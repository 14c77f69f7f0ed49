"""Webhooks from outside: hooks, providers' signatures, and what a delivery says.

A :class:`Hook` maps one provider's deliveries to one job, optionally only for
some events and branches. :func:`read_delivery` checks a delivery's signature
(constant-time) and reads its id, event, branch and author; it raises
:class:`WebhookRefused` with the HTTP status and a message the sender sees.
Nothing here touches the database: the store keeps hooks and the delivery log
(:mod:`sooner.store.webhooks`), the web route glues them (:mod:`sooner.webapp.hooks`).

Providers:

- ``github``: ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>``, ``X-GitHub-Delivery``,
  ``X-GitHub-Event``.
- ``gitlab``: ``X-Gitlab-Token`` equal to the secret, ``X-Gitlab-Event-UUID``, event from ``object_kind``.
- ``gitea`` / ``forgejo``: ``X-Gitea-Signature`` or ``X-Forgejo-Signature`` (hex HMAC-SHA256 of the body),
  ``X-Gitea-Delivery``/``X-Forgejo-Delivery``, ``X-Gitea-Event``/``X-Forgejo-Event``.
- ``standard`` (standardwebhooks.com): ``webhook-id``, ``webhook-timestamp`` (Unix seconds, within
  :data:`REPLAY_WINDOW_S` of now), ``webhook-signature``: space-separated ``v1,<base64 HMAC-SHA256 of
  id.timestamp.body>`` under the secret ``whsec_<base64 key>``; event from the payload's ``type``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from sooner.errors import SoonerError
from sooner.model.data import MAX_RUN_DATA_BYTES

PROVIDERS = ("github", "gitlab", "gitea", "forgejo", "standard")
MAX_BODY_BYTES = MAX_RUN_DATA_BYTES  # the payload becomes the run's data (SOONER_DATA)
REPLAY_WINDOW_S = 300
_HOOK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_DELIVERY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@+=-]{0,127}")
_EVENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_. :-]{0,63}")
_SHOWN = 200  # characters of a payload string kept in the trigger


class InvalidHook(SoonerError, ValueError):
    """A hook's name, provider, events or branches are not acceptable."""


class WebhookRefused(SoonerError):
    """A delivery that starts no run: ``status`` is the HTTP answer (401 bad signature, 400 bad input)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def validate_hook_name(name: str) -> str:
    """``name`` if it is 1–64 letters, digits, ``_``, ``.`` and ``-`` starting with a letter or digit."""
    if not isinstance(name, str) or not _HOOK_NAME.fullmatch(name):
        raise InvalidHook(f"hook name {str(name)[:70]!r} is not valid: use 1-64 letters, digits, '_', '.' "
                          "and '-', starting with a letter or digit")
    return name


def validate_provider(provider: str) -> str:
    if provider not in PROVIDERS:
        raise InvalidHook(f"unknown webhook provider {str(provider)[:40]!r}: use one of {', '.join(PROVIDERS)}")
    return provider


def new_secret(provider: str) -> str:
    """A random secret in the provider's form (Standard Webhooks: ``whsec_`` + base64 of 24 bytes)."""
    if provider == "standard":
        return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    return secrets.token_urlsafe(32)


def validate_secret(provider: str, secret: str) -> str:
    if not secret or len(secret) > 256 or not secret.isprintable():
        raise InvalidHook("a hook secret is 1-256 printable characters")
    if provider == "standard":
        _standard_key(secret)
    return secret


@dataclass(frozen=True)
class Hook:
    """One webhook endpoint ``/hooks/<provider>/<name>``: deliveries matching ``events`` and ``branches``
    (empty = any) start a run of ``job``. ``secret`` verifies signatures, so it is kept as given."""

    name: str
    provider: str
    job: str
    secret: str
    events: tuple[str, ...] = ()
    branches: tuple[str, ...] = ()
    created_at: datetime | None = None
    created_by: str | None = None

    def ignores(self, event: str | None, branch: str | None) -> str | None:
        """Why a verified delivery of ``event`` on ``branch`` starts no run, or None when it starts one."""
        if event == "ping" and "ping" not in self.events:  # GitHub/Gitea's test delivery when a hook is set up
            return "ping: the hook is reachable and the signature matches"
        if self.events and event not in self.events:
            return f"event {event!r} is not one of this hook's ({', '.join(self.events)})"
        if self.branches and branch not in self.branches:
            return f"branch {branch!r} is not one of this hook's ({', '.join(self.branches)})"
        return None

    def to_doc(self) -> dict[str, Any]:
        return {"_id": self.name, "provider": self.provider, "job": self.job, "secret": self.secret,
                "events": list(self.events), "branches": list(self.branches), "created_at": self.created_at,
                "created_by": self.created_by}

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> Hook:
        return cls(name=doc["_id"], provider=doc["provider"], job=doc["job"], secret=doc["secret"],
                   events=tuple(doc.get("events") or ()), branches=tuple(doc.get("branches") or ()),
                   created_at=doc.get("created_at"), created_by=doc.get("created_by"))


def make_hook(provider: str, name: str, job: str, *, secret: str | None, events: tuple[str, ...] = (),
              branches: tuple[str, ...] = (), now: datetime | None = None, by: str | None = None) -> Hook:
    """A validated new hook (a random secret unless one is given)."""
    validate_provider(provider)
    validate_hook_name(name)
    for event in events:
        if not _EVENT.fullmatch(event):
            raise InvalidHook(f"event name {event[:70]!r} is not valid")
    for branch in branches:
        if not branch or len(branch) > 255 or not branch.isprintable():
            raise InvalidHook(f"branch name {branch[:70]!r} is not valid")
    secret = validate_secret(provider, secret) if secret is not None else new_secret(provider)
    return Hook(name=name, provider=provider, job=job, secret=secret, events=tuple(events),
                branches=tuple(branches), created_at=now, created_by=by)


@dataclass(frozen=True)
class Delivery:
    """A verified delivery: its id (the dedupe key), event, branch, payload and the trigger's fields."""

    id: str
    event: str | None
    branch: str | None
    payload: Any
    author: dict[str, str] = field(default_factory=dict)
    message: str | None = None
    url: str | None = None


def read_delivery(hook: Hook, headers: Mapping[str, str], body: bytes, now: datetime) -> Delivery:
    """Verify ``body`` against ``hook``'s secret and read what it says; raises :class:`WebhookRefused`."""
    lower = {key.lower(): value for key, value in headers.items()}
    verify = _VERIFIERS[hook.provider]
    delivery_id = verify(hook.secret, lower, body, now)
    try:
        payload = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise WebhookRefused(400, f"the body is not JSON: {exc}") from None
    if delivery_id is None:  # providers without a delivery header: the body identifies the delivery
        delivery_id = "sha256-" + hashlib.sha256(body).hexdigest()[:40]
    if not _DELIVERY_ID.fullmatch(delivery_id):
        raise WebhookRefused(400, f"delivery id {delivery_id[:70]!r} is not valid")
    event = _event_of(hook.provider, lower, payload)
    return Delivery(id=delivery_id, event=event, branch=_branch_of(payload), payload=payload,
                    **_commit_info(hook.provider, payload))


def _same(expected: bytes, sent: str) -> bool:
    return hmac.compare_digest(expected, sent.strip().encode("ascii", "replace"))


def _hex_signature(secret: str, body: bytes) -> bytes:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest().encode()


def _verify_github(secret: str, headers: dict[str, str], body: bytes, now: datetime) -> str | None:
    sent = headers.get("x-hub-signature-256")
    if not sent:
        raise WebhookRefused(401, "unsigned: the X-Hub-Signature-256 header is missing")
    if not _same(b"sha256=" + _hex_signature(secret, body), sent):
        raise WebhookRefused(401, "X-Hub-Signature-256 does not match the body and this hook's secret")
    return headers.get("x-github-delivery")


def _verify_gitlab(secret: str, headers: dict[str, str], body: bytes, now: datetime) -> str | None:
    sent = headers.get("x-gitlab-token")
    if not sent:
        raise WebhookRefused(401, "unsigned: the X-Gitlab-Token header is missing")
    if not _same(secret.encode(), sent):
        raise WebhookRefused(401, "X-Gitlab-Token is not this hook's secret")
    return headers.get("x-gitlab-event-uuid")


def _verify_gitea(secret: str, headers: dict[str, str], body: bytes, now: datetime) -> str | None:
    sent = headers.get("x-forgejo-signature") or headers.get("x-gitea-signature")
    if not sent:
        raise WebhookRefused(401, "unsigned: the X-Gitea-Signature (or X-Forgejo-Signature) header is missing")
    if not _same(_hex_signature(secret, body), sent):
        raise WebhookRefused(401, "the X-Gitea-Signature does not match the body and this hook's secret")
    return headers.get("x-forgejo-delivery") or headers.get("x-gitea-delivery")


def _standard_key(secret: str) -> bytes:
    try:
        return base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidHook("a Standard Webhooks secret is 'whsec_' followed by base64") from None


def standard_signature(secret: str, msg_id: str, stamp: str, body: bytes) -> str:
    """Standard Webhooks' signature (without the ``v1,``): base64 HMAC-SHA256 of ``id.timestamp.body``.

    The one signing rule: incoming deliveries are verified with it and outgoing
    notifications (:mod:`sooner.model.notify`) are signed with it.
    """
    signed = msg_id.encode() + b"." + stamp.encode() + b"." + body
    return base64.b64encode(hmac.new(_standard_key(secret), signed, hashlib.sha256).digest()).decode()


def _verify_standard(secret: str, headers: dict[str, str], body: bytes, now: datetime) -> str | None:
    msg_id, stamp, sent = (headers.get(name) for name in ("webhook-id", "webhook-timestamp", "webhook-signature"))
    if not (msg_id and stamp and sent):
        raise WebhookRefused(401, "unsigned: webhook-id, webhook-timestamp and webhook-signature are all needed")
    try:
        moment = int(stamp)
    except ValueError:
        raise WebhookRefused(401, f"webhook-timestamp {stamp[:30]!r} is not Unix seconds") from None
    if abs(now.astimezone(timezone.utc).timestamp() - moment) > REPLAY_WINDOW_S:
        raise WebhookRefused(401, f"webhook-timestamp is more than {REPLAY_WINDOW_S} s from now (replay window)")
    expected = standard_signature(secret, msg_id, stamp, body).encode()
    matches = [_same(expected, part[3:]) for part in sent.split() if part.startswith("v1,")]
    if not any(matches):
        raise WebhookRefused(401, "no v1 webhook-signature matches the body and this hook's secret")
    return msg_id


_VERIFIERS = {"github": _verify_github, "gitlab": _verify_gitlab, "gitea": _verify_gitea,
              "forgejo": _verify_gitea, "standard": _verify_standard}


def _event_of(provider: str, headers: dict[str, str], payload: Any) -> str | None:
    body = _obj(payload)
    if provider == "github":
        event = headers.get("x-github-event")
    elif provider == "gitlab":
        event = body.get("object_kind") if isinstance(body.get("object_kind"), str) else None
    elif provider == "standard":
        event = body.get("type") if isinstance(body.get("type"), str) else None
    else:
        event = headers.get("x-forgejo-event") or headers.get("x-gitea-event")
    return event[:64] if event else None


def _branch_of(payload: Any) -> str | None:
    ref = payload.get("ref") if isinstance(payload, dict) else None
    if not isinstance(ref, str) or not ref.startswith("refs/heads/"):
        return None
    return ref.removeprefix("refs/heads/")[:255]


def _text(value: Any) -> str | None:
    return value[:_SHOWN] if isinstance(value, str) and value else None


def _commit_info(provider: str, payload: Any) -> dict[str, Any]:
    """Author, message and URL of what the delivery is about (Strider's trigger spec), as far as it says."""
    body = _obj(payload)
    if provider == "gitlab":
        commits = body.get("commits") if isinstance(body.get("commits"), list) else []
        last = _obj(commits[-1] if commits else None)
        author = {"name": body.get("user_name"), "email": body.get("user_email"),
                  "username": body.get("user_username")}
        return {"author": _clean(author), "message": _text(last.get("message")), "url": _text(last.get("url"))}
    head = _obj(body.get("head_commit"))
    commit_author, pusher, sender = _obj(head.get("author")), _obj(body.get("pusher")), _obj(body.get("sender"))
    author = {"name": commit_author.get("name") or pusher.get("name") or pusher.get("full_name"),
              "email": commit_author.get("email") or pusher.get("email"),
              "username": commit_author.get("username") or pusher.get("username") or sender.get("login")}
    return {"author": _clean(author), "message": _text(head.get("message")),
            "url": _text(head.get("url")) or _text(body.get("compare_url")) or _text(body.get("compare"))}


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _clean(author: dict[str, Any]) -> dict[str, str]:
    return {key: value[:_SHOWN] for key, value in author.items() if isinstance(value, str) and value}
