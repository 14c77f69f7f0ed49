"""A job: one deployed script path, with the settings people change and the policies its runs follow."""

from __future__ import annotations

import math
import random as _random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sooner.model.http_job import JobKind
from sooner.model.status import Missed, Overlap

if TYPE_CHECKING:
    from sooner.model.notify import NotifyRule

# The policy a job has until someone sets one: no retries; if enabled, 30 s doubling up to an hour, no jitter.
DEFAULT_BACKOFF_BASE_S = 30.0
DEFAULT_BACKOFF_FACTOR = 2.0
DEFAULT_MAX_BACKOFF_S = 3600.0


@dataclass(frozen=True)
class RetryPolicy:
    """Retry a failed/timed-out/lost run up to ``attempts`` more times, with exponential backoff.

    The wait before the attempt after attempt ``n`` is ``backoff_base_s × backoff_factor^(n-1)``,
    at most ``max_backoff_s``, multiplied by a random factor in ``[1 - jitter, 1 + jitter]``
    (so retries of many runs that failed together spread out) and still never over
    ``max_backoff_s``. Documents stored before the backoff fields existed have ``delay_s``,
    read as ``backoff_base_s``. Values are checked where users type them
    (:mod:`sooner.model.job_settings`); :meth:`from_doc` only falls back to defaults.
    """

    attempts: int = 0
    backoff_base_s: float = DEFAULT_BACKOFF_BASE_S
    backoff_factor: float = DEFAULT_BACKOFF_FACTOR
    max_backoff_s: float = DEFAULT_MAX_BACKOFF_S
    jitter: float = 0.0

    @property
    def total_attempts(self) -> int:
        """How many attempts a run gets in all: the first one and its retries."""
        return self.attempts + 1

    def attempt_label(self, attempt: int) -> str:
        """``2/3``: attempt ``attempt`` of the policy's total; beyond it (manual retries) just the number."""
        return f"{attempt}/{self.total_attempts}" if attempt <= self.total_attempts else str(attempt)

    def allows(self, attempt: int) -> bool:
        """Whether a run that was attempt number ``attempt`` gets another one."""
        return attempt <= self.attempts

    def delay_after(self, attempt: int, random: Callable[[], float] | None = None) -> float:
        """Seconds to wait before the attempt after ``attempt``.

        ``random`` returns a float in [0, 1) (default :func:`random.random`); it is called
        only when the policy has jitter, so tests pass a fixed one.
        """
        exponent = max(0, attempt - 1)
        try:
            delay = self.backoff_base_s * self.backoff_factor ** exponent
        except OverflowError:
            delay = math.inf
        delay = min(delay, self.max_backoff_s)
        if self.jitter > 0:
            draw = (random or _random.random)()
            delay *= 1 - self.jitter + 2 * self.jitter * draw
        return max(0.0, min(delay, self.max_backoff_s))

    def delays(self) -> list[float]:
        """The waits before each retry, without jitter (what the job page and ``job show`` list)."""
        return [RetryPolicy(self.attempts, self.backoff_base_s, self.backoff_factor, self.max_backoff_s)
                .delay_after(n) for n in range(1, self.attempts + 1)]

    def describe(self) -> str:
        """One line: ``3 retries, 30s × 2^n up to 3600s, jitter ±10%`` or ``no retries``."""
        if not self.attempts:
            return "no retries"
        text = (f"{self.attempts} retr{'y' if self.attempts == 1 else 'ies'}, {self.backoff_base_s:g}s"
                f" × {self.backoff_factor:g}^n up to {self.max_backoff_s:g}s")
        return text + (f", jitter ±{self.jitter * 100:g}%" if self.jitter else "")

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any] | None) -> RetryPolicy:
        doc = doc or {}
        base = doc.get("backoff_base_s", doc.get("delay_s"))
        return cls(attempts=int(_finite(doc.get("attempts"), 0)),
                   backoff_base_s=_finite(base, DEFAULT_BACKOFF_BASE_S),
                   backoff_factor=_finite(doc.get("backoff_factor"), DEFAULT_BACKOFF_FACTOR),
                   max_backoff_s=_finite(doc.get("max_backoff_s"), DEFAULT_MAX_BACKOFF_S),
                   jitter=min(1.0, _finite(doc.get("jitter"), 0.0)))

    def to_doc(self) -> dict[str, Any]:
        return {"attempts": self.attempts, "backoff_base_s": self.backoff_base_s, "backoff_factor": self.backoff_factor,
                "max_backoff_s": self.max_backoff_s, "jitter": self.jitter}


def _finite(value: Any, default: float) -> float:
    """A stored non-negative finite number (numeric strings too), else ``default``."""
    if isinstance(value, bool):
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        return default
    return number if math.isfinite(number) and number >= 0 else default


# Settings a user may change with `sooner job set` or the web UI, with their stored defaults.
JOB_DEFAULTS: dict[str, Any] = {
    "enabled": False,
    "schedule": None,
    "timezone": "UTC",
    "worker": None,
    "hooks": [],
    "timeout_s": None,
    "memory_limit_mb": None,
    "retry": RetryPolicy().to_doc(),
    "overlap": Overlap.SKIP.value,
    "missed": Missed.SKIP.value,
    "alert_after_s": None,
    "dedupe_window_s": None,
    "public_badge": False,
    "notify": [],
    "requires": [],
    "max_concurrent": None,
}

_FIELDS = ("enabled", "schedule", "timezone", "worker", "hooks", "timeout_s", "memory_limit_mb", "retry", "overlap",
           "missed", "alert_after_s", "dedupe_window_s", "public_badge", "notify", "requires", "max_concurrent",
           "deleted", "new", "commit", "blob", "kind", "created_at", "updated_at", "deleted_at", "scheduler_state")


@dataclass(frozen=True)
class Job:
    """A job document as a value. ``name`` is the stored ``_id`` (the script's path in the repository)."""

    name: str
    enabled: bool = False
    schedule: str | None = None
    timezone: str = "UTC"
    worker: str | None = None
    hooks: tuple[str, ...] = ()
    timeout_s: float | None = None
    # Resident memory (MB) the run's whole process tree may use; over it the run is killed and fails.
    memory_limit_mb: int | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    overlap: Overlap = Overlap.SKIP
    missed: Missed = Missed.SKIP
    # The dead man's switch's grace: a tick this much older without a run a worker took alerts (None = default).
    alert_after_s: float | None = None
    # Requests with the same dedupe key this many seconds apart get one run (None = keys are ignored).
    dedupe_window_s: float | None = None
    # Its status badge (/badge/<name>.svg) is shown to anyone, not only to signed-in users.
    public_badge: bool = False
    # Notify rules of this job ({on, to}; sooner.model.notify), as validated by job_settings when set.
    notify: tuple[Mapping[str, Any], ...] = ()
    # Tags a worker must all have to run it (copied onto each run when queued; sooner.model.dispatch).
    requires: tuple[str, ...] = ()
    # At most this many of its runs at once, fleet-wide (None = no limit; sooner.store.limits).
    max_concurrent: int | None = None
    deleted: bool = False
    new: bool = False
    commit: str | None = None
    blob: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    deleted_at: datetime | None = None
    scheduler_state: Mapping[str, Any] | None = None
    # A script, or an HTTP job (``*.http.json``); documents without it are scripts unless the name says otherwise.
    kind: JobKind = JobKind.SCRIPT
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def id(self) -> str:
        return self.name

    @property
    def schedulable(self) -> bool:
        """Enabled, not removed: its triggers may start runs."""
        return self.enabled and not self.deleted

    def notify_rules(self) -> tuple[NotifyRule, ...]:
        """The job's notify rules; a stored rule that is no longer valid counts as none (it was checked when set)."""
        from sooner.model.notify import InvalidNotifyRule, parse_rules

        try:
            return parse_rules(list(self.notify), "notify")
        except InvalidNotifyRule:
            return ()

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> Job:
        values = {**JOB_DEFAULTS, **doc}
        return cls(
            name=str(doc["_id"]), enabled=bool(values["enabled"]), schedule=values["schedule"] or None,
            timezone=values["timezone"] or "UTC", worker=values["worker"] or None,
            hooks=tuple(values["hooks"] or ()), timeout_s=_number(values["timeout_s"]),
            memory_limit_mb=_whole(values["memory_limit_mb"]),
            retry=RetryPolicy.from_doc(values["retry"]), overlap=_enum(Overlap, values["overlap"], Overlap.SKIP),
            missed=_enum(Missed, values["missed"], Missed.SKIP), alert_after_s=_positive(values.get("alert_after_s")),
            dedupe_window_s=_positive(values.get("dedupe_window_s")), public_badge=bool(values.get("public_badge")),
            notify=tuple(rule for rule in values.get("notify") or () if isinstance(rule, Mapping)),
            requires=tuple(str(tag) for tag in values.get("requires") or ()),
            max_concurrent=_whole(values.get("max_concurrent")),
            deleted=bool(values.get("deleted")),
            new=bool(values.get("new")), commit=values.get("commit"), blob=values.get("blob"),
            created_at=values.get("created_at"), updated_at=values.get("updated_at"),
            deleted_at=values.get("deleted_at"), scheduler_state=values.get("scheduler_state"),
            kind=_enum(JobKind, values.get("kind"), JobKind.of(str(doc["_id"]))),
            extra={k: v for k, v in doc.items() if k != "_id" and k not in _FIELDS},
        )

    def to_doc(self) -> dict[str, Any]:
        return {
            "_id": self.name, "enabled": self.enabled, "schedule": self.schedule, "timezone": self.timezone,
            "worker": self.worker, "hooks": list(self.hooks), "timeout_s": self.timeout_s,
            "memory_limit_mb": self.memory_limit_mb, "retry": self.retry.to_doc(), "overlap": self.overlap.value,
            "missed": self.missed.value, "alert_after_s": self.alert_after_s,
            "dedupe_window_s": self.dedupe_window_s, "public_badge": self.public_badge,
            "notify": [dict(rule) for rule in self.notify], "requires": list(self.requires),
            "max_concurrent": self.max_concurrent,
            "deleted": self.deleted, "new": self.new, "commit": self.commit, "blob": self.blob,
            "created_at": self.created_at, "updated_at": self.updated_at, "kind": self.kind.value,
            # Written only once set, as the repository does (a new job has neither).
            **({"deleted_at": self.deleted_at} if self.deleted_at is not None else {}),
            **({"scheduler_state": self.scheduler_state} if self.scheduler_state is not None else {}),
            **self.extra,
        }


def _number(value: Any) -> float | None:
    return float(value) if value not in (None, "") else None


def _positive(value: Any) -> float | None:
    """A stored positive finite number of seconds, else None (the default)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        return None
    return float(value)


def _whole(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else None


def _enum(enum: Any, value: Any, default: Any) -> Any:
    try:
        return enum(value)
    except ValueError:
        return default
