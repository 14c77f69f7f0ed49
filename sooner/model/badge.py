"""A job's status badge: which state its last run gives (the one rule), and its label and colour."""

from __future__ import annotations

from enum import Enum

from sooner.model.run import Run
from sooner.model.status import ACTIVE, RunStatus


class BadgeState(str, Enum):
    """What ``/badge/<job>.svg`` says; the value is the badge's text."""

    PASSING = "passing"
    FAILING = "failing"
    RUNNING = "running"
    CANCELLED = "cancelled"
    NEVER_RUN = "never run"

    @property
    def colour(self) -> str:
        return {"passing": "#2e7d32", "failing": "#c62828", "running": "#1565c0"}.get(self.value, "#757575")


def badge_state(last_run: Run | None) -> BadgeState:
    """The badge of a job whose newest run is ``last_run`` (queued and waiting runs count as running)."""
    if last_run is None:
        return BadgeState.NEVER_RUN
    if last_run.status in ACTIVE:
        return BadgeState.RUNNING
    if last_run.status is RunStatus.SUCCEEDED:
        return BadgeState.PASSING
    if last_run.status.unsuccessful:
        return BadgeState.FAILING
    return BadgeState.CANCELLED
