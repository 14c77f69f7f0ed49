"""The poison list: HTTP job runs that ended ``poison`` and nobody retried or discarded yet (``store.poison``).

A run is on the list while its status is ``poison``, it has no ``next_attempt`` (a retry takes it
off: :meth:`sooner.runs.service.RunService.retry` links one) and no ``dismissed_at`` (a discard:
:meth:`PoisonRuns.discard`, which keeps the status). The read is one equality on ``status``, the
first field of an index (:func:`sooner.store.schema.eq`), and the rest is checked here in Python:
poison runs are few.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from sooner.clock import aware
from sooner.model import Run, RunStatus
from sooner.model.failed import BulkResult
from sooner.store import schema
from sooner.store.failed import take_off_list

if TYPE_CHECKING:
    from sooner.store import Store

# The list reads at most this many poison runs (without their data); more are reported as ``truncated``.
MAX_SCAN = 20_000
VIEW_FIELDS = {"data": 0, "trigger.message": 0}
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


class PoisonRuns:
    """Reads and writes of the poison list on ``runs`` (``store.poison``); each write names its fields."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._runs = store.collection(schema.RUNS)

    def page(self, *, job: str | None = None, limit: int = 100) -> tuple[list[Run], int, bool]:
        """(runs, total, truncated): the list's runs (of ``job`` only, if given), newest end first, at most ``limit``."""
        docs = self.store.retry(lambda: list(self._runs.find({"status": schema.eq(RunStatus.POISON.value)}, dict(VIEW_FIELDS),
                                                             limit=MAX_SCAN + 1)))
        runs = [run for run in map(Run.from_doc, docs[:MAX_SCAN]) if _listed(run) and (job is None or run.job == job)]
        runs.sort(key=lambda run: _aware(run.finished_at or run.queued_at), reverse=True)
        return runs[:limit], len(runs), len(docs) > MAX_SCAN

    def count(self) -> int:
        """How many runs are on the list (for the navigation)."""
        return self.page(limit=1)[1]

    def discard(self, run_ids: Iterable[str], *, by: str, now: datetime | None = None) -> list[BulkResult]:
        """Take these runs off the list (their status stays ``poison``); one result per distinct id, in order.

        Sets ``dismissed_at`` and ``dismissed_by`` on a run that is poison, not retried and not
        discarded yet (one ``find_one_and_update``: of two discards, one wins); any other run is
        left alone and reported so. Ids in any form ``store.runs.get`` takes.
        """
        moment = now or self.store.clock.now()
        return take_off_list(
            self.store, self._runs, run_ids,
            listed=lambda run: {"_id": run.id, "status": RunStatus.POISON.value, "next_attempt": None,
                                "dismissed_at": None},
            update={"$set": {"dismissed_at": moment, "dismissed_by": by}},
            refusal=lambda run: _not_listed(self.store.runs.get(run.id)), done=f"discarded by {by}")


def _listed(run: Run) -> bool:
    return run.status is RunStatus.POISON and not run.next_attempt and run.dismissed_at is None


def _aware(moment: datetime | None) -> datetime:
    return _EPOCH if moment is None else aware(moment)


def _not_listed(run: Run) -> str:
    """Why a run is not on the poison list, for a refused discard."""
    if run.status is not RunStatus.POISON:
        return f"not on the poison list: it is {run.status.value}"
    if run.next_attempt:
        return f"retried already, as run {run.next_attempt}"
    if run.dismissed_at is not None:
        return f"discarded already (by {run.dismissed_by})"
    return "not on the poison list"
