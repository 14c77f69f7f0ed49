"""A worker process as a value, and the one rule for whether it is online."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from sooner.model.status import WorkerHealth
from sooner.model.target import served_targets

# A heartbeat is overdue after this many intervals (and never sooner than MIN_LATE_S).
LATE_AFTER_BEATS = 3
MIN_LATE_S = 5.0


def late_after_s(heartbeat_s: float) -> float:
    """Seconds without a heartbeat after which a worker no longer counts as online."""
    return max(LATE_AFTER_BEATS * heartbeat_s, MIN_LATE_S)


@dataclass(frozen=True)
class Worker:
    """A ``workers`` document. ``name`` is its ``_id``; ``instance`` identifies the process holding the name."""

    name: str
    instance: str | None = None
    host: str | None = None
    pid: int | None = None
    capacity: int = 1
    tags: tuple[str, ...] = ()
    version: str | None = None
    started_at: datetime | None = None
    heartbeat_at: datetime | None = None
    stopped_at: datetime | None = None
    running: tuple[str, ...] = ()
    cpu_percent: float | None = None
    rss_bytes: int | None = None
    # How fast it runs jobs relative to the fleet (sooner.model.dispatch.fleet_speeds; None = not measured).
    speed: float | None = None
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def heartbeat_age(self, now: datetime) -> float | None:
        if self.heartbeat_at is None:
            return None
        beat = self.heartbeat_at if self.heartbeat_at.tzinfo else self.heartbeat_at.replace(tzinfo=timezone.utc)
        return (now - beat).total_seconds()

    def health(self, now: datetime, heartbeat_s: float, lease_s: float) -> WorkerHealth:
        """Stopped, stale (past its lease), late (heartbeat overdue) or online."""
        age = self.heartbeat_age(now)
        if self.stopped_at is not None:
            return WorkerHealth.STOPPED
        if age is None or age > lease_s:
            return WorkerHealth.STALE
        if age > late_after_s(heartbeat_s):
            return WorkerHealth.LATE
        return WorkerHealth.ONLINE

    def online(self, now: datetime, heartbeat_s: float) -> bool:
        """Running and heard from recently enough to take runs (see :func:`late_after_s`)."""
        age = self.heartbeat_age(now)
        return self.stopped_at is None and age is not None and age <= late_after_s(heartbeat_s)

    def serves(self, target: str | None) -> bool:
        """Whether this worker may take a run aimed at ``target`` (see :mod:`sooner.model.target`)."""
        return target in served_targets(self.name, self.tags)

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> Worker:
        known = ("instance", "host", "pid", "capacity", "tags", "version", "started_at", "heartbeat_at",
                 "stopped_at", "running", "cpu_percent", "rss_bytes", "speed")
        return cls(
            name=str(doc["_id"]), instance=doc.get("instance"), host=doc.get("host"), pid=doc.get("pid"),
            capacity=int(doc.get("capacity") or 1), tags=tuple(doc.get("tags") or ()), version=doc.get("version"),
            started_at=doc.get("started_at"), heartbeat_at=doc.get("heartbeat_at"), stopped_at=doc.get("stopped_at"),
            running=tuple(doc.get("running") or ()), cpu_percent=doc.get("cpu_percent"),
            rss_bytes=doc.get("rss_bytes"), speed=doc.get("speed"),
            extra={k: v for k, v in doc.items() if k != "_id" and k not in known},
        )

    def to_doc(self) -> dict[str, Any]:
        return {"_id": self.name, "instance": self.instance, "host": self.host, "pid": self.pid,
                "capacity": self.capacity, "tags": list(self.tags), "version": self.version,
                "started_at": self.started_at, "heartbeat_at": self.heartbeat_at, "stopped_at": self.stopped_at,
                "running": list(self.running), "cpu_percent": self.cpu_percent, "rss_bytes": self.rss_bytes,
                **({"speed": self.speed} if self.speed is not None else {}), **self.extra}
