"""Notifications: the end-of-run listener that fills the outbox, and the notifier that empties it.

:func:`enqueue_run_end` (the ``notify`` end-of-run listener) asks :mod:`sooner.model.notify` which events
the run's end is and which rules (the site's ``notify`` setting and the job's own) send them where, and
inserts one outbox entry per target (:mod:`sooner.store.notifications`). It never sends anything itself, so
a slow or dead receiver never slows or fails the run that ended.

:class:`Notifier` runs as a thread of the scheduler process (``sooner scheduler``, and so ``sooner up``).
``step(now)`` claims due entries one at a time, sends each through apprise (or a signed Standard Webhooks
POST for ``webhook+https://`` targets), and records ``sent``, a retry (``notify_attempts`` tries,
``notify_backoff_s`` doubling) or ``failed`` with the error. A target that got ``notify_rate_per_target``
notifications in ``notify_rate_window_s`` gets no more (``suppressed``) until the window allows one, then
one summary saying how many were suppressed. Every minute it also asks the dead man's switch
(:func:`sooner.scheduling.alerts.job_alerts`) for jobs whose tick was expected but did not run and
enqueues one ``missed`` notification per such tick.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sooner.errors import SoonerError, StoreError
from sooner.model import RunStatus
from sooner.model.notify import (Notification, NotifyEvent, NotifyRule, missed_base_id, missed_message, new_claim,
                                 notifications_for, parse_rules, run_events, run_message, summary_message,
                                 target_label, wants, webhook_request)

if TYPE_CHECKING:
    from sooner.clock import Clock
    from sooner.config import Settings
    from sooner.model import Run
    from sooner.runs.listeners import RunEnded
    from sooner.store import Store

logger = logging.getLogger(__name__)

LEASE_S = 60.0  # longer than any one send (apprise's and our timeouts are seconds)
SEND_TIMEOUT_S = 10.0
MISSED_EVERY = timedelta(minutes=1)
HISTORY = 50  # runs of the job read to find the previous finished one (recovery)
SUMMARY_PREFIX = "summary/"


class NotifyFailed(SoonerError):
    """A notification could not be delivered; the message is what the run page shows."""


@functools.lru_cache(maxsize=16)
def _site_rules(text: str) -> tuple[NotifyRule, ...]:
    return parse_rules(json.loads(text), "notify", site=True)


def site_rules(settings: Settings) -> tuple[NotifyRule, ...]:
    """The site-wide rules (checked when the settings were loaded; parsed once per distinct setting)."""
    if not settings.notify:
        return ()
    return _site_rules(json.dumps(list(settings.notify), sort_keys=True))


# -- the end-of-run listener ------------------------------------------------------
def enqueue_run_end(ended: RunEnded) -> None:
    """Insert the outbox entries a finished run's end calls for (none without matching rules)."""
    run, service = ended.run, ended.service
    job = ended.job
    rules = site_rules(service.settings) + (job.notify_rules() if job is not None else ())
    if not rules:
        return
    retried = False
    if run.status.failed and wants(rules, NotifyEvent.FAILURE):
        # The retry listener ran first: a failure that will be retried is not news yet.
        stored = service.store.runs.find(run.id)
        retried = stored is not None and stored.next_attempt is not None
    previous = None
    if run.status is RunStatus.SUCCEEDED and wants(rules, NotifyEvent.RECOVERY):
        previous = previous_status(service.store, run)
    events = run_events(run, retried=retried, previous=previous)
    if not events:
        return
    entries = notifications_for(
        events, run.job, rules,
        lambda event: run_message(event, run, now=ended.now, public_url=service.settings.public_url),
        base_id=run.id, run=run.id, now=ended.now)
    if entries:
        service.store.notifications.enqueue(entries)


def previous_status(store: Store, run: Run) -> RunStatus | None:
    """How the job's previous finished run ended, outside ``run``'s attempt chain (cancelled runs skipped)."""
    chain = run.chain or run.id

    def order(other: Run) -> tuple[int, str]:  # run numbers follow queue order; ids break ties of old runs
        return (other.number or 0, other.id)
    history = store.reads.job_history(run.job, HISTORY, fields=["queued_at", "chain", "number"])
    for other in sorted(history, key=order, reverse=True):
        if (other.chain or other.id) == chain or order(other) > order(run):
            continue
        if other.status.active or other.status is RunStatus.CANCELLED:
            continue
        return other.status
    return None


# -- sending ----------------------------------------------------------------------
Sender = Callable[[Notification, datetime], None]


def make_sender(settings: Settings) -> Sender:
    """The production sender: apprise for its URLs, ``requests`` for signed webhooks; raises :class:`NotifyFailed`."""
    def send(entry: Notification, now: datetime) -> None:
        if entry.signed_webhook:
            _send_webhook(entry, settings.notify_webhook_secret, now)
        else:
            _send_apprise(entry)
    return send


def _send_webhook(entry: Notification, secret: str | None, now: datetime) -> None:
    import requests

    if not secret:
        raise NotifyFailed("notify_webhook_secret is not set: a webhook+ target needs it to sign")
    msg_id = "msg_" + hashlib.sha256(entry.id.encode()).hexdigest()[:24]  # the same id on every retry
    url, headers, body = webhook_request(entry.target, secret, entry.message, msg_id=msg_id, now=now)
    try:
        response = requests.post(url, data=body, headers=headers, timeout=SEND_TIMEOUT_S, allow_redirects=False)
    except requests.RequestException as exc:
        raise NotifyFailed(_reason(str(exc))) from None
    if not 200 <= response.status_code < 300:
        raise NotifyFailed(f"HTTP {response.status_code}")


def _send_apprise(entry: Notification) -> None:
    import apprise

    sender = apprise.Apprise()
    if not sender.add(entry.target):
        raise NotifyFailed("apprise does not accept this URL")
    with apprise.LogCapture(level=logging.DEBUG) as log:
        ok = sender.notify(title=entry.message.title, body=entry.message.body)
    if not ok:
        raise NotifyFailed(_reason(log.getvalue()))


_ERRNO = re.compile(r"\[Errno -?\d+\] ([^'\")\]]+)")
_HTTP = re.compile(r"error=(\d{3})")


def _reason(text: str) -> str:
    """A short error: ``Connection refused``, ``HTTP 500``, else the last warning apprise logged."""
    found = _ERRNO.search(text)
    if found:
        return found.group(1).strip()
    http = _HTTP.search(text)
    if http:
        return f"HTTP {http.group(1)}"
    lines = [line.split(" - ", 2)[-1] for line in text.splitlines() if " - WARNING - " in line or " - ERROR - " in line]
    return (lines[-1] if lines else text.strip().splitlines()[-1] if text.strip() else "not delivered")[:300]


# -- the notifier ---------------------------------------------------------------------
class Notifier:
    """Delivers the outbox (see the module docstring); ``step(now)`` is one pass, ``run_forever`` the loop."""

    def __init__(self, store: Store, settings: Settings, clock: Clock | None = None, *,
                 send: Sender | None = None, lease_s: float = LEASE_S, batch: int = 20) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock or store.clock
        self.send = send or make_sender(settings)
        self.lease_s = lease_s
        self.batch = batch
        self._missed_at: datetime | None = None

    def step(self, now: datetime | None = None) -> list[Notification]:
        """Summaries due, then every due pending entry (up to ``batch``), the missed check; returns those settled."""
        now = now or self.clock.now()
        self.check_missed(now)
        self._summarize(now)
        settled: list[Notification] = []
        for entry in self.store.notifications.pending(limit=self.batch * 5):
            if len(settled) >= self.batch:
                break
            if entry.not_before and entry.not_before > now or entry.lease_until and entry.lease_until > now:
                continue
            done = self.deliver(entry, now)
            if done is not None:
                settled.append(done)
        self.store.notifications.prune_expired(now)
        return settled

    def deliver(self, seen: Notification, now: datetime) -> Notification | None:
        """Claim one entry and send it (or suppress it); None if another notifier took it first."""
        claim = new_claim()
        entry = self.store.notifications.take(seen, claim=claim, lease_until=now + timedelta(seconds=self.lease_s))
        if entry is None:
            return None
        repo = self.store.notifications
        if not entry.id.startswith(SUMMARY_PREFIX) and self._over_rate(entry.key, now):
            repo.record_suppressed(entry.id, claim, now=now)
        else:
            try:
                self.send(entry, now)
            except Exception as exc:  # any sender error is the entry's, never the notifier's
                error = str(exc) if isinstance(exc, NotifyFailed) else f"{type(exc).__name__}: {exc}"
                self._failed(entry, claim, error[:300], now)
            else:
                repo.record_sent(entry.id, claim, now=now)
        return repo.find(entry.id)

    def _failed(self, entry: Notification, claim: str, error: str, now: datetime) -> None:
        if entry.attempts >= self.settings.notify_attempts:
            logger.warning("notification %s to %s failed after %d attempts: %s", entry.id, entry.label,
                           entry.attempts, error)
            self.store.notifications.record_failed(entry.id, claim, error=error, now=now)
            return
        wait = self.settings.notify_backoff_s * 2 ** (entry.attempts - 1)
        self.store.notifications.record_retry(entry.id, claim, error=error, not_before=now + timedelta(seconds=wait))

    def _over_rate(self, key: str, now: datetime) -> bool:
        limit = self.settings.notify_rate_per_target
        times = self.store.notifications.sent_times(key, limit)
        return len(times) >= limit and times[-1] > now - timedelta(seconds=self.settings.notify_rate_window_s)

    def _summarize(self, now: datetime) -> None:
        """For each target with suppressed entries that may be sent to again: one summary entry."""
        groups: dict[str, list[Notification]] = {}
        for entry in self.store.notifications.unreported_suppressed():
            groups.setdefault(entry.key, []).append(entry)
        for key, entries in groups.items():
            if self._over_rate(key, now):
                continue
            message = summary_message(len(entries), [entry.job for entry in entries],
                                      self.settings.notify_rate_per_target, self.settings.notify_rate_window_s)
            first = entries[0]
            summary = Notification(id=f"{SUMMARY_PREFIX}{key}/{first.id}", job=first.job, event=first.event,
                                   target=first.target, label=target_label(first.target), message=message,
                                   created_at=now, not_before=now)
            self.store.notifications.enqueue([summary])
            self.store.notifications.mark_reported(entry.id for entry in entries)

    def check_missed(self, now: datetime, *, force: bool = False) -> int:
        """Enqueue ``missed`` notifications for ticks the dead man's switch alerts on; at most once a minute."""
        if not force and self._missed_at is not None and now - self._missed_at < MISSED_EVERY:
            return 0
        self._missed_at = now
        site = site_rules(self.settings)
        jobs = [job for job in self.store.jobs.scheduled() if job.schedulable]
        ruled = {job.name: site + job.notify_rules() for job in jobs}
        watched = [job for job in jobs if any(rule.matches(NotifyEvent.MISSED, job.name) for rule in ruled[job.name])]
        if not watched:
            return 0
        from sooner.scheduling.alerts import job_alerts

        new = 0
        for name, alert in job_alerts(self.store, watched, now).items():
            if not alert.alerting or alert.expected_at is None:
                continue
            message = missed_message(name, alert.expected_at, alert.reason, public_url=self.settings.public_url)
            entries = notifications_for(
                [NotifyEvent.MISSED], name, ruled[name], lambda event, message=message: message,
                base_id=missed_base_id(name, alert.expected_at), run=None, now=now)
            new += self.store.notifications.enqueue(entries)
        return new

    def run_forever(self, stop: threading.Event, interval_s: float = 1.0) -> None:
        """Step until ``stop`` is set; a failing step (the database away) is logged and tried again."""
        while not stop.is_set():
            try:
                self.step()
            except StoreError as exc:  # the database is away: the entries wait in the outbox
                logger.warning("notifier: %s; trying again", exc)
            except Exception:
                logger.exception("notifier step failed; trying again")
            stop.wait(interval_s)


def start_notifier(store: Store, settings: Settings, clock: Clock | None = None) -> Callable[[], None]:
    """Run a :class:`Notifier` in a daemon thread; returns the function that stops it (and waits briefly)."""
    stop = threading.Event()
    notifier = Notifier(store, settings, clock)
    thread = threading.Thread(target=notifier.run_forever, args=(stop,), name="sooner-notifier", daemon=True)
    thread.start()

    def halt() -> None:
        stop.set()
        thread.join(timeout=SEND_TIMEOUT_S + 5)
    return halt


def notified_lines(store: Store, run_id: str) -> list[str]:
    """``json://host/path sent 12:00:03`` per notification of the run (``sooner logs``, pages)."""
    return [entry.describe() for entry in store.notifications.for_run(run_id)]


def api_notifications(store: Store, run_id: str) -> list[dict[str, Any]]:
    """The run's notifications as the API shows them (targets redacted)."""
    return [entry.to_api() for entry in store.notifications.for_run(run_id)]
