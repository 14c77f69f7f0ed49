"""The vocabulary of a run's life and of a job's policies: the only place their values are spelled."""

from __future__ import annotations

from enum import Enum


class RunStatus(str, Enum):
    """Where a run is in its life. ``waiting`` runs wait for an earlier run of the same job (overlap=queue)."""

    WAITING = "waiting"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    LOST = "lost"
    # An HTTP job whose step failed every attempt (sooner.model.http_job): its steps were retried
    # already, so the job's retry policy does not apply; it waits in the poison list instead.
    POISON = "poison"

    @property
    def active(self) -> bool:
        """Not ended yet: waiting, queued or running."""
        return self in ACTIVE

    @property
    def finished(self) -> bool:
        return not self.active

    @property
    def failed(self) -> bool:
        """Ended badly in a way its job's retry policy applies to (failed, timed out, lost)."""
        return self in FAILED_KINDS

    @property
    def unsuccessful(self) -> bool:
        """Ended badly: failed, timed out, lost or poison. Such a run may be retried by hand."""
        return self in FAILED_KINDS or self is RunStatus.POISON

    @property
    def outcome(self) -> str | None:
        """``succeeded``/``failed`` for ends that emit ``job:<name>:<outcome>``; None for the others."""
        if self is RunStatus.SUCCEEDED:
            return "succeeded"
        if self in (RunStatus.FAILED, RunStatus.TIMED_OUT, RunStatus.POISON):
            return "failed"
        return None

    @staticmethod
    def outcome_event(job: str, outcome: str) -> str:
        """The event that announces a run of ``job`` ended with ``outcome`` (see :attr:`outcome`)."""
        return f"job:{job}:{outcome}"

    @staticmethod
    def outcome_events(job: str) -> list[str]:
        """Every event a run of ``job`` may announce its end with."""
        return [RunStatus.outcome_event(job, outcome) for outcome in ("succeeded", "failed")]

    @classmethod
    def values(cls, statuses: frozenset[RunStatus] | None = None) -> list[str]:
        """The stored strings of ``statuses`` (default: every status), in declaration order."""
        return [s.value for s in cls if statuses is None or s in statuses]

    @classmethod
    def parse(cls, value: str | RunStatus) -> RunStatus:
        """The status named ``value``; ValueError listing the known ones otherwise."""
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"unknown status {value!r}: use one of {', '.join(cls.values())}") from None


ACTIVE: frozenset[RunStatus] = frozenset({RunStatus.WAITING, RunStatus.QUEUED, RunStatus.RUNNING})
FINISHED: frozenset[RunStatus] = frozenset(set(RunStatus) - ACTIVE)
# A job's retry policy applies to these ends; cancelled and succeeded runs are never retried.
FAILED_KINDS: frozenset[RunStatus] = frozenset({RunStatus.FAILED, RunStatus.TIMED_OUT, RunStatus.LOST})
# Started, or about to be, so a run of a job with overlap=queue waits behind these.
BUSY: frozenset[RunStatus] = frozenset({RunStatus.QUEUED, RunStatus.RUNNING})


class Overlap(str, Enum):
    """What happens when a job fires while a run of it is queued or running."""

    ALLOW = "allow"  # start another run alongside
    SKIP = "skip"  # drop the new fire (default)
    QUEUE = "queue"  # queue it; it starts when the earlier run ends


class Missed(str, Enum):
    """What the scheduler does with ticks missed while no scheduler ran."""

    SKIP = "skip"  # forget them (default)
    CATCH_UP_ONCE = "catch_up_once"  # one run for the whole missed period


class WorkerHealth(str, Enum):
    """How a worker looks from its heartbeat (see :meth:`sooner.model.Worker.health`)."""

    ONLINE = "online"
    LATE = "late"  # heartbeat overdue, lease not expired yet
    STALE = "stale"  # its leases have expired: its runs will be (or were) marked lost
    STOPPED = "stopped"
