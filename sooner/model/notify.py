"""Notifications: which ends of runs notify whom, what the message says, and how a webhook is signed.

A *rule* is ``{on: [failure, recovery, success, missed], to: [targets], jobs: GLOB}`` (``jobs`` only in
the site-wide ``notify`` setting; a job's own ``notify`` setting applies to that job). A *target* is an
apprise URL (``json://host/path``, ``slack://…``, ``mailto://…``) or ``webhook+https://…`` for a signed
Standard Webhooks POST. :func:`run_events` says which events a finished run is; :func:`notifications_for`
turns events and rules into outbox entries (:class:`Notification`), one per (run, target), whose ``_id``
is derived from them so a replayed end notifies nobody twice. The notifier (:mod:`sooner.runs.notifier`)
delivers them; the store keeps them (:mod:`sooner.store.notifications`).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from sooner.errors import SoonerError
from sooner.model.run import Run
from sooner.model.status import RunStatus
from sooner.model.webhook import InvalidHook, standard_signature, validate_secret

WEBHOOK_PREFIX = "webhook+"  # webhook+https://… : a Standard Webhooks POST signed with notify_webhook_secret
MAX_RULES = 20
MAX_TARGETS = 20
MAX_TARGET_CHARS = 2000
MAX_NOTE_CHARS = 500


class NotifyEvent(str, Enum):
    """What a notification is about."""

    FAILURE = "failure"  # the run failed (or timed out, or was lost) and no retry follows
    RECOVERY = "recovery"  # it succeeded after the job's previous finished run had failed
    SUCCESS = "success"
    MISSED = "missed"  # the dead man's switch: a tick was expected but did not run


class NotifyState(str, Enum):
    """Where an outbox entry is: waiting to be (re)sent, or done one way or another."""

    PENDING = "pending"  # not sent yet (a failed attempt waits for ``not_before``)
    SENT = "sent"
    FAILED = "failed"  # every attempt failed
    SUPPRESSED = "suppressed"  # over the target's rate limit; counted in the next summary

    @property
    def done(self) -> bool:
        return self is not NotifyState.PENDING


class InvalidNotifyRule(SoonerError, ValueError):
    """A notify rule (site setting or job setting) is not valid; the message says which part."""


@dataclass(frozen=True)
class NotifyRule:
    """Notify ``to`` of the ``on`` events of the jobs matching ``jobs`` (None = the job the rule is set on)."""

    on: tuple[NotifyEvent, ...]
    to: tuple[str, ...]
    jobs: str | None = None

    def matches(self, event: NotifyEvent, job: str) -> bool:
        return event in self.on and (self.jobs is None or fnmatch.fnmatchcase(job, self.jobs))

    def to_doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"on": [event.value for event in self.on], "to": list(self.to)}
        if self.jobs is not None:
            doc["jobs"] = self.jobs
        return doc

    def describe(self) -> str:
        """``failure, recovery → json://host/path, slack://T...A/…`` (targets redacted)."""
        shown = ", ".join(target_label(target) for target in self.to)
        where = f" (jobs {self.jobs})" if self.jobs else ""
        return f"{', '.join(event.value for event in self.on)} → {shown}{where}"


def shown_rule(rule: NotifyRule) -> dict[str, Any]:
    """A rule as pages and the API show it: targets as :func:`target_label` (no secrets)."""
    return {**rule.to_doc(), "to": [target_label(target) for target in rule.to]}


def parse_rules(value: Any, key: str = "notify", *, site: bool = False) -> tuple[NotifyRule, ...]:
    """Rules from what a user typed (a list of objects, or JSON text of one); raises :class:`InvalidNotifyRule`.

    ``key`` starts every message (``notify[1].to[0]: …``); ``site`` allows ``jobs``.
    """
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return ()
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise InvalidNotifyRule(f"{key}: not JSON ({exc})") from None
    if isinstance(value, Mapping):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise InvalidNotifyRule(f"{key}: must be a list of rules like "
                                '[{"on": ["failure"], "to": ["json://host/path"]}]')
    if len(value) > MAX_RULES:
        raise InvalidNotifyRule(f"{key}: at most {MAX_RULES} rules")
    return tuple(_rule(item, f"{key}[{n}]", site) for n, item in enumerate(value))


def _rule(item: Any, where: str, site: bool) -> NotifyRule:
    if not isinstance(item, Mapping):
        raise InvalidNotifyRule(f"{where}: must be an object with 'on' and 'to'")
    allowed = {"on", "to", "jobs"} if site else {"on", "to"}
    unknown = sorted(str(k) for k in item if k not in allowed)
    if unknown:
        raise InvalidNotifyRule(f"{where}: unknown key {unknown[0]!r} (a rule has {', '.join(sorted(allowed))})")
    on = _list(item.get("on"), f"{where}.on")
    events = []
    for n, name in enumerate(on):
        try:
            events.append(NotifyEvent(name))
        except ValueError:
            raise InvalidNotifyRule(f"{where}.on[{n}]: {str(name)[:40]!r} is not one of "
                                    f"{', '.join(e.value for e in NotifyEvent)}") from None
    targets = _list(item.get("to"), f"{where}.to")
    if len(targets) > MAX_TARGETS:
        raise InvalidNotifyRule(f"{where}.to: at most {MAX_TARGETS} targets")
    checked = tuple(validate_target(target, f"{where}.to[{n}]") for n, target in enumerate(targets))
    jobs = item.get("jobs")
    if jobs is not None and (not isinstance(jobs, str) or not jobs.strip() or len(jobs) > 200):
        raise InvalidNotifyRule(f"{where}.jobs: must be a glob of job names such as 'reports/*'")
    return NotifyRule(on=tuple(dict.fromkeys(events)), to=checked, jobs=jobs.strip() if jobs else None)


def _list(value: Any, where: str) -> list[Any]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise InvalidNotifyRule(f"{where}: must be a non-empty list")
    return value


def validate_target(target: Any, where: str = "target") -> str:
    """``target`` if it is a ``webhook+http(s)://`` URL or a URL apprise can send to."""
    if not isinstance(target, str) or not target.strip() or len(target) > MAX_TARGET_CHARS:
        raise InvalidNotifyRule(f"{where}: must be a URL (at most {MAX_TARGET_CHARS} characters)")
    target = target.strip()
    if target.startswith(WEBHOOK_PREFIX):
        parts = urlsplit(target.removeprefix(WEBHOOK_PREFIX))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidNotifyRule(f"{where}: a signed webhook is webhook+https://host/path")
        return target
    import apprise  # only where a target is checked: the model stays light to import

    if "://" not in target or apprise.Apprise.instantiate(target) is None:
        raise InvalidNotifyRule(f"{where}: {target_label(target)!r} is not a URL apprise can notify "
                                "(e.g. json://host/path, slack://…, mailto://…) nor webhook+https://…")
    return target


def target_label(target: str) -> str:
    """The target as pages may show it: no password, token or query (apprise's privacy form, shortened)."""
    if target.startswith(WEBHOOK_PREFIX):
        parts = urlsplit(target.removeprefix(WEBHOOK_PREFIX))
        host = parts.hostname or ""
        netloc = f"{'***@' if parts.username or parts.password else ''}{host}{f':{parts.port}' if parts.port else ''}"
        return WEBHOOK_PREFIX + urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    try:
        import apprise

        plugin = apprise.Apprise.instantiate(target)
        private = plugin.url(privacy=True) if plugin is not None else None
    except Exception:  # a label must never fail: the target was checked when it was set
        private = None
    if not private:
        return target.split("://", 1)[0] + "://…"
    return private.split("?", 1)[0]


def target_key(target: str) -> str:
    """A short digest of a target: part of entry ids, and what the rate limit counts by."""
    return hashlib.sha256(target.encode()).hexdigest()[:16]


def validate_webhook_secret(secret: str | None) -> str | None:
    """The site's Standard Webhooks signing secret (``whsec_`` + base64), or None."""
    if secret is None:
        return None
    try:
        return validate_secret("standard", secret)
    except InvalidHook as exc:
        raise InvalidNotifyRule(str(exc)) from None


def run_events(run: Run, *, retried: bool, previous: RunStatus | None) -> list[NotifyEvent]:
    """The events a finished run is: ``failure`` (failed kinds, no retry follows), ``success`` and, when
    the job's previous finished run outside this run's chain (``previous``) had failed, ``recovery``."""
    if run.status.failed:
        return [] if retried else [NotifyEvent.FAILURE]
    if run.status is RunStatus.SUCCEEDED:
        recovered = previous is not None and previous.failed
        return [NotifyEvent.RECOVERY, NotifyEvent.SUCCESS] if recovered else [NotifyEvent.SUCCESS]
    return []


def wants(rules: Iterable[NotifyRule], event: NotifyEvent) -> bool:
    return any(event in rule.on for rule in rules)


@dataclass(frozen=True)
class Message:
    """What a notification says: a title, a body of plain text, and the data a webhook carries."""

    title: str
    body: str
    data: Mapping[str, Any] = field(default_factory=dict)


def run_message(event: NotifyEvent, run: Run, *, now: datetime, public_url: str | None) -> Message:
    """``hello.sh#42 failed`` and a body with status, duration, note and a link to the run page."""
    verb = {NotifyEvent.FAILURE: run.status.value.replace("_", " "), NotifyEvent.RECOVERY: "recovered",
            NotifyEvent.SUCCESS: "succeeded", NotifyEvent.MISSED: "missed"}[event]
    lines = [f"Job {run.job}, run {run.ref}: {run.status.value}"]
    duration = run.duration(now)
    if duration is not None:
        lines.append(f"Duration: {duration:.1f} s")
    if run.exit_code is not None:
        lines.append(f"Exit code: {run.exit_code}")
    if run.note:
        lines.append(f"Note: {run.note[:MAX_NOTE_CHARS]}")
    link = f"{public_url.rstrip('/')}/runs/{run.id}" if public_url else None
    if link:
        lines.append(link)
    data = {"event": event.value, "job": run.job, "run": run.id, "ref": run.ref, "status": run.status.value,
            "exit_code": run.exit_code, "duration_s": duration, "note": run.note, "url": link}
    return Message(title=f"{run.ref} {verb}", body="\n".join(lines), data=data)


def missed_message(job: str, expected_at: datetime, reason: str | None, *, public_url: str | None) -> Message:
    """``reports/daily.sh missed its 09:00 run`` with the dead man's switch's reason."""
    when = expected_at.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    link = f"{public_url.rstrip('/')}/jobs/{job}" if public_url else None
    lines = [f"Job {job} was expected at {when} but did not run" + (f": {reason}" if reason else "")]
    if link:
        lines.append(link)
    data = {"event": NotifyEvent.MISSED.value, "job": job, "expected_at": expected_at.isoformat(), "reason": reason,
            "url": link}
    return Message(title=f"{job} missed its {when} run", body="\n".join(lines), data=data)


def summary_message(count: int, jobs: Sequence[str], limit: int, window_s: float) -> Message:
    """``12 notifications suppressed``: what a target gets once its rate limit allows again."""
    names = sorted(set(jobs))
    shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
    return Message(title=f"{count} notifications suppressed",
                   body=f"{count} notifications to this target were suppressed by the rate limit "
                        f"({limit} per {window_s:g} s), about: {shown}",
                   data={"event": "suppressed", "count": count, "jobs": names})


@dataclass(frozen=True)
class Notification:
    """One outbox entry: one message to one target. ``target`` holds secrets; pages show ``label``."""

    id: str
    job: str
    event: NotifyEvent
    target: str
    label: str
    message: Message
    run: str | None = None
    state: NotifyState = NotifyState.PENDING
    attempts: int = 0
    error: str | None = None
    created_at: datetime | None = None
    not_before: datetime | None = None
    lease_until: datetime | None = None
    claim: str | None = None
    sent_at: datetime | None = None
    finished_at: datetime | None = None
    reported: bool = False  # suppressed entries: counted in a "suppressed N" summary already

    @property
    def key(self) -> str:
        return target_key(self.target)

    @property
    def signed_webhook(self) -> bool:
        return self.target.startswith(WEBHOOK_PREFIX)

    def describe(self) -> str:
        """``json://host/path sent 12:00:03`` / ``… failed (Connection refused), retrying``."""
        if self.state is NotifyState.SENT and self.sent_at is not None:
            return f"{self.label} sent {self.sent_at.astimezone(timezone.utc):%H:%M:%S}"
        if self.state is NotifyState.PENDING:
            return f"{self.label} failed ({self.error}), retrying" if self.error else f"{self.label} pending"
        if self.state is NotifyState.FAILED:
            return f"{self.label} failed ({self.error or 'unknown error'}) after {self.attempts} attempts"
        return f"{self.label} suppressed (rate limit)"

    def to_doc(self) -> dict[str, Any]:
        # Every field is written, so equality filters never meet a missing one (the claim matches on claim).
        return {"_id": self.id, "job": self.job, "event": self.event.value, "target": self.target,
                "target_key": self.key, "label": self.label, "run": self.run, "state": self.state.value,
                "title": self.message.title, "body": self.message.body, "data": dict(self.message.data),
                "attempts": self.attempts, "error": self.error, "created_at": self.created_at,
                "not_before": self.not_before, "lease_until": self.lease_until, "claim": self.claim,
                "sent_at": self.sent_at, "finished_at": self.finished_at, "reported": self.reported}

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> Notification:
        return cls(id=str(doc["_id"]), job=doc.get("job") or "", event=NotifyEvent(doc["event"]),
                   target=doc.get("target") or "", label=doc.get("label") or "",
                   message=Message(doc.get("title") or "", doc.get("body") or "", doc.get("data") or {}),
                   run=doc.get("run"), state=NotifyState(doc.get("state") or NotifyState.PENDING.value),
                   attempts=int(doc.get("attempts") or 0), error=doc.get("error"), created_at=doc.get("created_at"),
                   not_before=doc.get("not_before"), lease_until=doc.get("lease_until"), claim=doc.get("claim"),
                   sent_at=doc.get("sent_at"), finished_at=doc.get("finished_at"),
                   reported=bool(doc.get("reported")))

    def to_api(self) -> dict[str, Any]:
        """What pages and the API show: everything but the target itself (it may hold a secret)."""
        return {"id": self.id, "event": self.event.value, "target": self.label, "state": self.state.value,
                "attempts": self.attempts, "error": self.error, "created_at": self.created_at,
                "sent_at": self.sent_at, "next_attempt_at": self.not_before if not self.state.done else None,
                "text": self.describe()}


def notifications_for(events: Sequence[NotifyEvent], job: str, rules: Iterable[NotifyRule], message_of: Any, *,
                      base_id: str, run: str | None, now: datetime) -> list[Notification]:
    """One entry per target that some rule sends one of ``events`` to; the first matching event wins
    (a recovery is not also a success to the same target). ``message_of(event)`` renders the message.

    ids are ``<base_id>/<target digest>``: the same end (or missed tick) always makes the same ids.
    """
    chosen: dict[str, NotifyEvent] = {}
    for event in events:
        for rule in rules:
            if rule.matches(event, job):
                for target in rule.to:
                    chosen.setdefault(target, event)
    messages: dict[NotifyEvent, Message] = {}
    entries = []
    for target, event in chosen.items():
        if event not in messages:
            messages[event] = message_of(event)
        entries.append(Notification(id=f"{base_id}/{target_key(target)}", job=job, event=event, target=target,
                                    label=target_label(target), message=messages[event], run=run, created_at=now,
                                    not_before=now))
    return entries


def missed_base_id(job: str, expected_at: datetime) -> str:
    """The part of a missed tick's entry ids that names the tick: one notification per missed tick."""
    return "missed/" + hashlib.sha256(f"{job}\0{expected_at.astimezone(timezone.utc).isoformat()}".encode()
                                      ).hexdigest()[:24]


def webhook_request(target: str, secret: str, message: Message, *, msg_id: str,
                    now: datetime) -> tuple[str, dict[str, str], bytes]:
    """URL, headers and body of a Standard Webhooks POST (``webhook-id``, ``-timestamp``, ``-signature``)."""
    body = json.dumps({"type": f"sooner.{message.data.get('event', 'notification')}",
                       "timestamp": now.astimezone(timezone.utc).isoformat(),
                       "data": {**message.data, "title": message.title, "body": message.body}},
                      default=str, separators=(",", ":")).encode()
    stamp = str(int(now.timestamp()))
    headers = {"content-type": "application/json", "webhook-id": msg_id, "webhook-timestamp": stamp,
               "webhook-signature": "v1," + standard_signature(secret, msg_id, stamp, body)}
    return target.removeprefix(WEBHOOK_PREFIX), headers, body


def new_claim() -> str:
    return secrets.token_hex(8)
