"""A run of a job, as a value: its status, trigger, timing, progress and result."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from sooner.clock import aware
from sooner.model.run_ref import run_label
from sooner.model.status import RunStatus
from sooner.model.trigger import Trigger, trigger_from_doc

DEFAULT_PROGRESS_MAX = 100


@dataclass(frozen=True)
class Progress:
    """How far a run says it is: ``current`` out of ``max``."""

    current: float
    max: float = DEFAULT_PROGRESS_MAX

    @property
    def percent(self) -> float | None:
        """0-100, or None when ``max`` is not positive."""
        if self.max <= 0:
            return None
        return max(0.0, min(100.0, self.current * 100.0 / self.max))

    def to_doc(self) -> dict[str, float]:
        return {"current": self.current, "max": self.max}

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any] | None) -> Progress | None:
        if not doc or doc.get("current") is None:
            return None
        current, maximum = doc["current"], doc.get("max") or DEFAULT_PROGRESS_MAX
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (current, maximum)):
            return None
        return cls(current, maximum)  # ints stay ints: the API shows 3/10, not 3.0/10.0


# What a later worker on the same host needs to find and verify the run's processes (written once set).
_PROCESS_FIELDS = ("host", "pid_started_at", "pgid", "supervisor_pid", "supervisor_started_at", "process_gone",
                   "outlives_lease_s")
# The attempt chain and the Failed view (written once set): see the fields' comments on Run.
_ATTEMPT_FIELDS = ("chain", "next_attempt", "failed_view", "dismissed_at", "dismissed_by")
# Dedupe and relocation (written once set): see the fields' comments on Run.
_ROUTING_FIELDS = ("dedupe_key", "relocated_to", "has_waiters")
# What the run's process tree used (RunUsage), recorded with its end.
_USAGE_FIELDS = ("peak_rss_bytes", "cpu_s")
_FIELDS = ("fire_kind", "job", "number", "status", "trigger", "data", "commit", "target", "worker", "pid", "exit_code",
           "progress", "attempt", "depth", "timeout_s", "queued_at", "not_before", "started_at", "finished_at", "claimed_at",
           "lease_until", "cancel_requested", "cancelled_by", "note", "duration_s", "scheduled_for", *_PROCESS_FIELDS,
           *_ATTEMPT_FIELDS, *_ROUTING_FIELDS, *_USAGE_FIELDS)


@dataclass(frozen=True)
class Run:
    """A run document as a value. ``id`` is the stored ``_id`` (an ObjectId hex string)."""

    id: str
    job: str
    status: RunStatus = RunStatus.QUEUED
    # The job's run number, assigned at insert (RunRepo.insert); None on runs stored before numbers.
    number: int | None = None
    trigger: Trigger = field(default_factory=Trigger)
    data: Any = None
    commit: str | None = None
    target: str | None = None
    worker: str | None = None
    pid: int | None = None
    exit_code: int | None = None
    progress: Progress | None = None
    attempt: int = 1
    depth: int = 0
    timeout_s: float | None = None
    queued_at: datetime | None = None
    not_before: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    claimed_at: datetime | None = None
    lease_until: datetime | None = None
    cancel_requested: bool = False
    cancelled_by: str | None = None
    note: str | None = None
    duration_s: float | None = None
    # The script's process, recorded when it starts: host, its create time (psutil's, epoch seconds),
    # its process group, and the run's supervisor process (see sooner.worker.supervise).
    host: str | None = None
    pid_started_at: float | None = None
    pgid: int | None = None
    supervisor_pid: int | None = None
    supervisor_started_at: float | None = None
    # A worker on ``host`` confirmed that no process of the run is left (so its retry need not wait).
    process_gone: bool = False
    # How long past its lease's expiry the script may still run: its worker keeps scripts going through a
    # database outage (outage_grace_s), so a retry of the run, if lost, waits this much longer.
    outlives_lease_s: float | None = None
    # Attempts of one run form a chain: ``chain`` is the id of its first attempt (a first attempt's own
    # id; None on runs from before chains), ``next_attempt`` the run that retried this one.
    chain: str | None = None
    next_attempt: str | None = None
    # In the Failed view: it failed and got no further attempt, and nobody retried or dismissed it since.
    failed_view: bool = False
    dismissed_at: datetime | None = None
    dismissed_by: str | None = None
    # The dedupe key this run holds (sooner.model.dedupe). Written only when set, since its unique index must
    # not see runs without one; removed once its window passed and another request took the key.
    dedupe_key: str | None = None
    # The run that continues this one on another worker (kill and relocate: RunService.relocate).
    relocated_to: str | None = None
    # What its process tree used (RunUsage): the peak of its summed resident memory, its CPU seconds.
    peak_rss_bytes: int | None = None
    cpu_s: float | None = None
    # A run of its job waits behind this one (overlap queue): its end releases the oldest (RunService.queue).
    has_waiters: bool = False
    # Never stored: True on the run RunService.queue returned instead of a new one (it held the dedupe key).
    deduplicated: bool = field(default=False, compare=False)
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def ref(self) -> str:
        """The short form people read and type: ``hello.sh#42`` (:mod:`sooner.model.run_ref`)."""
        return run_label(self.job, self.number, self.id)

    @property
    def active(self) -> bool:
        return self.status.active

    @property
    def finished(self) -> bool:
        return self.status.finished

    def duration(self, now: datetime) -> float | None:
        """Seconds it ran: the recorded duration once ended, else from its start until ``now``."""
        if self.duration_s is not None:
            return float(self.duration_s)
        if self.started_at is None:
            return None
        end = self.finished_at or now
        return max(0.0, (aware(end) - aware(self.started_at)).total_seconds())

    def waited_s(self, started_at: datetime) -> float:
        """Seconds from when the run could first start (queued, or its retry time) until ``started_at``."""
        return ready_for_s(self.queued_at, self.not_before, started_at)

    @property
    def chain_root(self) -> str:
        """The id of the first attempt of this run's chain (its own id for a first attempt)."""
        return self.chain or self.id

    @property
    def error(self) -> str:
        """What went wrong, in one line: the note, else the exit code, else the status."""
        if self.note:
            return self.note
        if self.exit_code is not None:
            return f"exit code {self.exit_code}"
        return self.status.value.replace("_", " ")

    @property
    def error_group(self) -> str:
        """:attr:`error` without the times and run ids that differ between runs that failed alike."""
        return _RUN_ID.sub("…", _TIMESTAMP.sub("…", self.error))

    def due(self, now: datetime) -> bool:
        """Whether a queued run may start at ``now`` (a retry waits for its ``not_before``)."""
        return due_by(self.not_before, now)

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> Run:
        return cls(
            id=str(doc["_id"]), job=doc.get("job") or "", number=doc.get("number"),
            status=RunStatus(doc.get("status") or RunStatus.QUEUED),
            trigger=trigger_from_doc(doc.get("trigger")), data=doc.get("data"), commit=doc.get("commit"),
            target=doc.get("target"), worker=doc.get("worker"), pid=doc.get("pid"), exit_code=doc.get("exit_code"),
            progress=Progress.from_doc(doc.get("progress")), attempt=int(doc.get("attempt") or 1),
            depth=int(doc.get("depth") or 0), timeout_s=doc.get("timeout_s"), queued_at=doc.get("queued_at"),
            not_before=doc.get("not_before"), started_at=doc.get("started_at"), finished_at=doc.get("finished_at"),
            claimed_at=doc.get("claimed_at"), lease_until=doc.get("lease_until"),
            cancel_requested=bool(doc.get("cancel_requested")), cancelled_by=doc.get("cancelled_by"),
            note=doc.get("note"), duration_s=doc.get("duration_s"), host=doc.get("host"),
            pid_started_at=doc.get("pid_started_at"), pgid=doc.get("pgid"), supervisor_pid=doc.get("supervisor_pid"),
            supervisor_started_at=doc.get("supervisor_started_at"), process_gone=bool(doc.get("process_gone")),
            outlives_lease_s=doc.get("outlives_lease_s"),
            chain=doc.get("chain"), next_attempt=doc.get("next_attempt"), failed_view=bool(doc.get("failed_view")),
            dismissed_at=doc.get("dismissed_at"), dismissed_by=doc.get("dismissed_by"),
            dedupe_key=doc.get("dedupe_key"), relocated_to=doc.get("relocated_to"),
            peak_rss_bytes=doc.get("peak_rss_bytes"), cpu_s=doc.get("cpu_s"),
            has_waiters=bool(doc.get("has_waiters")),
            extra={k: v for k, v in doc.items() if k != "_id" and k not in _FIELDS},
        )

    def evolve(self, **changes: Any) -> Run:
        """A copy with ``changes``, for values already valid (nothing is converted or checked but the names).

        ``dataclasses.replace`` runs ``__init__`` over every field, ~75 µs a run: three per fire were
        a fifth of a thousand-job tick's scheduler CPU. This copies the fields instead.
        """
        unknown = set(changes) - _DATACLASS_FIELDS
        if unknown:
            raise TypeError(f"Run has no field(s) {sorted(unknown)}")
        copy = object.__new__(Run)
        copy.__dict__.update(self.__dict__, **changes)
        return copy

    def to_doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "_id": self.id, "job": self.job, "status": self.status.value, "trigger": self.trigger.to_doc(),
            "data": self.data, "commit": self.commit, "target": self.target, "worker": self.worker, "pid": self.pid,
            "exit_code": self.exit_code, "progress": self.progress.to_doc() if self.progress else None,
            "attempt": self.attempt, "depth": self.depth, "timeout_s": self.timeout_s, "queued_at": self.queued_at,
            "not_before": self.not_before, "started_at": self.started_at, "finished_at": self.finished_at,
            "lease_until": self.lease_until, "cancel_requested": self.cancel_requested, "note": self.note,
        }
        for name in ("number", "claimed_at", "cancelled_by", "duration_s", *_PROCESS_FIELDS, *_ATTEMPT_FIELDS,
                     *_ROUTING_FIELDS, *_USAGE_FIELDS):
            value = getattr(self, name)
            if value is not None and value is not False:  # process_gone is written once true
                doc[name] = value
        scheduled_for = getattr(self.trigger, "scheduled_for", None)
        if scheduled_for is not None:
            # The unique one_run_per_fire index: one run per (job, scheduled_for, fire_kind).
            doc["scheduled_for"] = scheduled_for
            doc["fire_kind"] = self.trigger.kind
        doc.update(self.extra)
        return doc


_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}(:\d{2}(\.\d+)?)?( ?UTC|Z|[+-]\d{2}:?\d{2})?")
_RUN_ID = re.compile(r"\b[0-9a-f]{10,24}\b")


def due_by(not_before: datetime | None, now: datetime) -> bool:
    """Whether a queued run with this ``not_before`` may start at ``now`` (a retry waits for it)."""
    return not_before is None or aware(not_before) <= aware(now)


def ready_for_s(queued_at: datetime | None, not_before: datetime | None, now: datetime) -> float:
    """Seconds from when a run could first start (queued, or its retry time) to ``now``; 0 if unknown or later."""
    ready = max((aware(t) for t in (queued_at, not_before) if t is not None), default=None)
    return 0.0 if ready is None else max(0.0, (aware(now) - ready).total_seconds())


@dataclass(frozen=True)
class RunUsage:
    """What a run's process tree used: the peak of its summed resident memory and its CPU seconds (user + system).

    Recorded on the run by its end (``RunService.finish(usage=…)``) in the same write.
    """

    peak_rss_bytes: int
    cpu_s: float

    def fields(self) -> dict[str, Any]:
        """The run document's fields."""
        return {"peak_rss_bytes": int(self.peak_rss_bytes), "cpu_s": round(float(self.cpu_s), 3)}

    @classmethod
    def from_doc(cls, doc: Any) -> RunUsage | None:
        """From :meth:`fields` (a journal record); None for anything else."""
        if not isinstance(doc, Mapping):
            return None
        rss, cpu = doc.get("peak_rss_bytes"), doc.get("cpu_s")
        if isinstance(rss, bool) or isinstance(cpu, bool) or not isinstance(rss, (int, float)) \
                or not isinstance(cpu, (int, float)):
            return None
        return cls(int(rss), float(cpu))


_DATACLASS_FIELDS = frozenset(f.name for f in fields(Run))
