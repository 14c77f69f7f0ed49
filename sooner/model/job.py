"""A job: one deployed script path, with the settings people change and the policies its runs follow."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sooner.model.status import Missed, Overlap

# A retry never waits longer than this, whatever the policy says.
MAX_RETRY_DELAY_S = 3600.0


@dataclass(frozen=True)
class RetryPolicy:
    """Retry a failed/timed-out/lost run up to ``attempts`` more times, waiting ``delay_s`` × 2^(attempt-1)."""

    attempts: int = 0
    delay_s: float = 30

    def allows(self, attempt: int) -> bool:
        """Whether a run that was attempt number ``attempt`` gets another one."""
        return attempt <= self.attempts

    def delay_after(self, attempt: int) -> float:
        """Seconds to wait before the attempt after ``attempt``."""
        return min(self.delay_s * (2 ** max(0, attempt - 1)), MAX_RETRY_DELAY_S)

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any] | None) -> RetryPolicy:
        doc = doc or {}
        delay = doc.get("delay_s", 30)
        return cls(attempts=int(doc.get("attempts", 0) or 0),
                   delay_s=delay if isinstance(delay, (int, float)) and not isinstance(delay, bool) else 30)

    def to_doc(self) -> dict[str, Any]:
        return {"attempts": self.attempts, "delay_s": self.delay_s}


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
}

_FIELDS = ("enabled", "schedule", "timezone", "worker", "hooks", "timeout_s", "memory_limit_mb", "retry", "overlap",
           "missed", "deleted", "new", "commit", "blob", "created_at", "updated_at", "deleted_at", "scheduler_state")


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
    deleted: bool = False
    new: bool = False
    commit: str | None = None
    blob: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    deleted_at: datetime | None = None
    scheduler_state: Mapping[str, Any] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def id(self) -> str:
        return self.name

    @property
    def schedulable(self) -> bool:
        """Enabled, not removed: its triggers may start runs."""
        return self.enabled and not self.deleted

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> Job:
        values = {**JOB_DEFAULTS, **doc}
        return cls(
            name=str(doc["_id"]), enabled=bool(values["enabled"]), schedule=values["schedule"] or None,
            timezone=values["timezone"] or "UTC", worker=values["worker"] or None,
            hooks=tuple(values["hooks"] or ()), timeout_s=_number(values["timeout_s"]),
            memory_limit_mb=_whole(values["memory_limit_mb"]),
            retry=RetryPolicy.from_doc(values["retry"]), overlap=_enum(Overlap, values["overlap"], Overlap.SKIP),
            missed=_enum(Missed, values["missed"], Missed.SKIP), deleted=bool(values.get("deleted")),
            new=bool(values.get("new")), commit=values.get("commit"), blob=values.get("blob"),
            created_at=values.get("created_at"), updated_at=values.get("updated_at"),
            deleted_at=values.get("deleted_at"), scheduler_state=values.get("scheduler_state"),
            extra={k: v for k, v in doc.items() if k != "_id" and k not in _FIELDS},
        )

    def to_doc(self) -> dict[str, Any]:
        return {
            "_id": self.name, "enabled": self.enabled, "schedule": self.schedule, "timezone": self.timezone,
            "worker": self.worker, "hooks": list(self.hooks), "timeout_s": self.timeout_s,
            "memory_limit_mb": self.memory_limit_mb, "retry": self.retry.to_doc(), "overlap": self.overlap.value,
            "missed": self.missed.value,
            "deleted": self.deleted, "new": self.new, "commit": self.commit, "blob": self.blob,
            "created_at": self.created_at, "updated_at": self.updated_at,
            # Written only once set, as the repository does (a new job has neither).
            **({"deleted_at": self.deleted_at} if self.deleted_at is not None else {}),
            **({"scheduler_state": self.scheduler_state} if self.scheduler_state is not None else {}),
            **self.extra,
        }


def _number(value: Any) -> float | None:
    return float(value) if value not in (None, "") else None


def _whole(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else None


def _enum(enum: Any, value: Any, default: Any) -> Any:
    try:
        return enum(value)
    except ValueError:
        return default
