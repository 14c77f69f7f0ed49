"""The ``runs`` collection: one document per run of a job, read and written as :class:`~sooner.model.Run`.

These are the persistence steps of a run's life; which step happens when is
decided by :class:`sooner.runs.service.RunService`, the only caller of the
methods that change ``status``. Run ids are ObjectId hex strings: unique and
sortable by creation time. People name runs by their job's run number
(``hello.sh#42``, given at insert by :mod:`sooner.store.counters`);
:meth:`RunRepo.get` finds a run by any form :mod:`sooner.model.run_ref` reads.
"""

from __future__ import annotations

import builtins
import re
from datetime import datetime, timedelta
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Callable, Iterable

from bson import ObjectId
from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from sooner.errors import RunNotFound, SoonerError
from sooner.model import ACTIVE, BUSY, Run, RunStatus
from sooner.model.dispatch import Candidate, Sample, eligible
from sooner.model.run_ref import FORMS, parse_run_ref
from sooner.model.target import served_targets
from sooner.store import schema
from sooner.store.bulk import Insert, Update, bulk_write
from sooner.store.group import GroupCommit

if TYPE_CHECKING:
    from sooner.store import Store


# How many of the oldest queued runs one claim considers (others may be not yet due).
CLAIM_CANDIDATES = 20
# Pages of candidates a claim reads at most when whole pages need tags the worker lacks.
CLAIM_PAGES = 5
# Rounds of insert / find the holder / release an expired holder before insert_holding_key gives up.
KEY_ROUNDS = 5


class RunRepo:
    """Domain operations on ``runs``; each names the fields it changes."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.collection = store.collection(schema.RUNS)
        # Scripts a worker starts at nearly the same moment: their starts in one bulk write (sooner.store.group).
        self._starts: GroupCommit[tuple[str, dict[str, Any]], None] = GroupCommit(self._set_each)

    @staticmethod
    def new_id() -> str:
        return str(ObjectId())

    # -- creating ---------------------------------------------------------
    def insert(self, run: Run, *, stamp: Callable[[], datetime] | None = None) -> Run | None:
        """Insert a new run with the job's next run number. None when a run for the same cron tick exists already.

        A trigger with ``scheduled_for`` makes the insert idempotent per (job, tick)
        through the unique ``one_run_per_fire`` index (see sooner.store.schema); the
        number taken for a refused insert is not used again. With ``stamp`` (a clock's
        ``now``) the run is queued at its insert: see :meth:`_stamped`.
        """
        run = self._stamped(self._numbered(run), stamp)
        document = run.to_doc()
        try:
            self.store.retry(lambda: self.collection.insert_one(document))
        except DuplicateKeyError:
            return None
        return run

    def insert_fires(self, runs: builtins.list[Run], *,
                     stamp: Callable[[], datetime] | None = None) -> builtins.list[Run | None]:
        """Insert the runs of one scheduler tick's fires at once; per run, as :meth:`insert` answers.

        Three round trips for any number of runs (run numbers: two, see
        :meth:`~sooner.store.counters.Counters.take_run_numbers`; then one unordered
        bulk insert), instead of two per run. A run refused as a duplicate is looked
        at on its own: inserted after all (a retried insert_many), the fire of another
        scheduler (None, as :meth:`insert`), or else inserted again with a fresh number.
        """
        if not runs:
            return []
        wanted: dict[str, int] = {}
        for run in runs:
            if run.number is None:
                wanted[run.job] = wanted.get(run.job, 0) + 1
        numbers = self.store.counters.take_run_numbers(wanted)
        at = stamp() if stamp is not None else None
        # One copy per run (Run.evolve): two dataclasses.replace each took ~70 ms of a 1,000-run tick.
        numbered = [self._fire_ready(run, numbers, at) for run in runs]
        refused = bulk_write(self.store, self.collection, [Insert(run.to_doc()) for run in numbered])
        results: builtins.list[Run | None] = []
        for index, run in enumerate(numbered):
            if index not in refused:
                results.append(run)
            elif self.store.retry(lambda: self.collection.find_one({"_id": run.id}, {"_id": 1})) is not None:
                results.append(run)
            elif getattr(run.trigger, "scheduled_for", None) is not None and self._fired(run):
                results.append(None)
            else:
                results.append(self.insert(replace(run, number=None)))
        return results

    def active_jobs(self, jobs: Iterable[str]) -> set[str]:
        """Which of ``jobs`` have a run waiting, queued or running (one query for all of them)."""
        names = builtins.list(dict.fromkeys(jobs))
        if not names:
            return set()
        return {doc["job"] for doc in self.store.retry(lambda: builtins.list(self.collection.find(
            {"job": {"$in": names}, "status": {"$in": RunStatus.values(ACTIVE)}}, {"job": 1})))}

    def insert_holding_key(self, run: Run, expired: Callable[[Run], bool], *,
                           stamp: Callable[[], datetime] | None = None) -> Run | None:
        """Insert ``run``, which carries a ``dedupe_key``, unless another run of its job holds that key.

        Returns the inserted run, or the run holding the key (with ``deduplicated`` set) when
        ``expired(holder)`` is false. An expired holder gives the key up (``dedupe_key`` moves to
        ``dedupe_key_expired``) and the insert is tried again. None when a run for the same time
        trigger fire exists already (as :meth:`insert`).

        Why the key lives on the run, under the unique ``one_run_per_key`` index, and not in a
        collection of its own: the insert of the run *is* the claim of the key, so no crash can
        leave a key claimed for a run that was never inserted, and no concurrent request can see a
        key whose run does not exist yet. Any number of processes may race: the index lets one
        insert win, the others find its run; releasing an expired holder matches on the holder
        still having the key, so two releasers cannot free a key someone took meanwhile.
        """
        key = run.dedupe_key
        if key is None:
            raise ValueError("insert_holding_key needs a run with a dedupe_key")
        run = self._stamped(self._numbered(run), stamp)  # one number for all rounds; unused when a holder is returned
        document = run.to_doc()
        for _ in range(KEY_ROUNDS):
            try:
                self.store.retry(lambda: self.collection.insert_one(document))
                return run
            except DuplicateKeyError:
                pass
            holder = self.key_holder(run.job, key)
            if holder is None:
                if getattr(run.trigger, "scheduled_for", None) is not None and self._fired(run):
                    return None  # the duplicate was the time trigger's fire, not the key
                continue  # released meanwhile: try again
            if not expired(holder):
                return replace(holder, deduplicated=True)
            self.store.retry(lambda: self.collection.update_one(
                {"_id": holder.id, "dedupe_key": key},
                {"$unset": {"dedupe_key": ""}, "$set": {"dedupe_key_expired": key}}))
        raise SoonerError(f"could not queue a run of {run.job} under dedupe key {key!r}: "
                          f"other requests kept taking it; try again")

    def _numbered(self, run: Run) -> Run:
        return run if run.number is not None else replace(run, number=self.store.counters.next_run_number(run.job))

    @staticmethod
    def _stamped(run: Run, stamp: Callable[[], datetime] | None) -> Run:
        """``run`` queued when ``stamp()`` says, read just before its insert (after the number and deploy
        reads): ``queued_at`` is when the run entered the queue, so queued->started is dispatch alone.
        ``not_before`` moves with it unless it was set later on purpose (a delayed retry)."""
        if stamp is None:
            return run
        return run.evolve(**RunRepo._stamp_fields(run, stamp()))

    @staticmethod
    def _fire_ready(run: Run, numbers: dict[str, builtins.list[int]], at: datetime | None) -> Run:
        """``run`` with the next of its job's ``numbers`` (unless it has one) and stamped queued ``at``."""
        changes: dict[str, Any] = {} if run.number is not None else {"number": numbers[run.job].pop(0)}
        if at is not None:
            changes.update(RunRepo._stamp_fields(run, at))
        return run.evolve(**changes) if changes else run

    @staticmethod
    def _stamp_fields(run: Run, at: datetime) -> dict[str, Any]:
        """What stamping ``run`` queued at ``at`` changes (see :meth:`_stamped`)."""
        return {"queued_at": at, "not_before": max(run.not_before, at) if run.not_before else at}

    def key_holder(self, job: str, key: str) -> Run | None:
        """The run of ``job`` that holds dedupe key ``key``, if any (expired or not)."""
        doc = self.store.retry(lambda: self.collection.find_one({"dedupe_key": key, "job": job}))
        return Run.from_doc(doc) if doc else None

    def _fired(self, run: Run) -> bool:
        scheduled_for = getattr(run.trigger, "scheduled_for", None)
        return self.store.retry(lambda: self.collection.find_one(
            {"job": run.job, "scheduled_for": scheduled_for, "fire_kind": run.trigger.kind}, {"_id": 1})) is not None

    # -- claiming and running ----------------------------------------------
    def claim_candidates(self, worker: str, tags: Iterable[str], *, now: datetime,
                         limit: int = CLAIM_CANDIDATES) -> builtins.list[str]:
        """Ids of the oldest queued runs this worker may run (by name, tag or untargeted) that are due."""
        return [offer.id for offer in self.claim_offers(worker, tags, now=now, limit=limit)]

    def claim_offers(self, worker: str, tags: Iterable[str], *, now: datetime,
                     limit: int = CLAIM_CANDIDATES) -> builtins.list[Candidate]:
        """The oldest queued runs this worker may run now, as :class:`~sooner.model.dispatch.Candidate`s.

        One query by status and target (its index); ``not_before`` and the run's ``requires`` tags
        (:func:`~sooner.model.dispatch.eligible`) are checked here. When every run of a full page
        needs tags this worker lacks, the next page is read, so runs no one here can take never hide
        the ones it can (only then is it more than one query).
        """
        tags = builtins.list(tags)
        targets: list[Any] = served_targets(worker, tags)
        fields = dict.fromkeys(Candidate.FIELDS, 1)
        # Status by schema.eq: the embedded server answers it from the (status, queued_at) index.
        # not_before is checked here: most runs have none, and "missing or past" is an $or.
        offers: builtins.list[Candidate] = []
        for page in range(CLAIM_PAGES):
            docs = self.store.retry(lambda: list(self.collection.find(
                {"status": schema.eq(RunStatus.QUEUED.value), "target": {"$in": targets}}, fields,
                sort=[("queued_at", 1)], skip=page * limit, limit=limit)))
            found = [Candidate.from_doc(doc) for doc in docs]
            offers += [c for c in found if c.due(now) and eligible(c.requires, tags)]
            if offers or len(docs) < limit or all(not c.requires for c in found):
                break
        return offers

    def recent_samples(self, limit: int) -> builtins.list[Sample]:
        """Durations of the succeeded runs among the newest ``limit`` runs, newest first (what speeds are measured on)."""
        docs = self.store.retry(lambda: list(self.collection.find(
            {}, {"job": 1, "worker": 1, "status": 1, "duration_s": 1}, sort=[("queued_at", -1)], limit=limit)))
        return [Sample(str(doc["worker"]), str(doc.get("job")), float(doc["duration_s"])) for doc in docs
                if doc.get("status") == RunStatus.SUCCEEDED.value and doc.get("worker")
                and isinstance(doc.get("duration_s"), (int, float))]

    def statuses(self, run_ids: Iterable[str]) -> dict[str, RunStatus]:
        """The status of each of these runs that exists, by id (one ``_id $in`` query)."""
        ids = builtins.list(dict.fromkeys(run_ids))
        if not ids:
            return {}
        docs = self.store.retry(lambda: list(self.collection.find({"_id": {"$in": ids}}, {"status": 1})))
        return {str(doc["_id"]): RunStatus(doc["status"]) for doc in docs if doc.get("status")}

    def take(self, run_id: str, worker: str, lease_s: float, *, now: datetime,
             slots: builtins.list[str] | None = None, outlives_lease_s: float | None = None) -> Run | None:
        """Claim this run if it is still queued (None if another worker was faster).

        Changes ``status`` (running), ``worker``, ``claimed_at``, ``lease_until``, ``outlives_lease_s``
        when given (how long past the lease's expiry the worker may let the script run), and
        ``limit_slots`` when the claim took concurrency limit slots for it (:mod:`sooner.store.limits`).
        """
        fields = self._claim_fields(worker, lease_s, now, outlives_lease_s)
        if slots:
            fields["limit_slots"] = slots
        doc = self.store.retry(lambda: self.collection.find_one_and_update(
            {"_id": run_id, "status": RunStatus.QUEUED.value}, {"$set": fields},
            return_document=ReturnDocument.AFTER))
        return Run.from_doc(doc) if doc else None

    def take_many(self, run_ids: Iterable[str], worker: str, lease_s: float, *, now: datetime,
                  outlives_lease_s: float | None = None) -> builtins.list[Run]:
        """Claim those of these runs that are still queued, in one update and one read; the runs taken, in the
        order given (the others were taken by another worker meanwhile).

        What changes is what :meth:`take` changes (no concurrency limit slots), plus ``claim_token``: the
        update marks the runs it took with a new token, and the read keeps the runs carrying it. So a
        retried update (its answer lost) still finds the runs the first attempt took.
        """
        ids = builtins.list(dict.fromkeys(run_ids))
        if len(ids) < 2:
            taken = self.take(ids[0], worker, lease_s, now=now, outlives_lease_s=outlives_lease_s) if ids else None
            return [taken] if taken is not None else []
        token = ObjectId().binary.hex()
        fields = {**self._claim_fields(worker, lease_s, now, outlives_lease_s), "claim_token": token}
        self.store.retry(lambda: self.collection.update_many(
            {"_id": {"$in": ids}, "status": RunStatus.QUEUED.value}, {"$set": fields}))
        # By _id only: the embedded server answers `_id $in` from its index, and the token is checked here.
        docs = self.store.retry(lambda: list(self.collection.find({"_id": {"$in": ids}})))
        mine = {doc["_id"]: Run.from_doc(doc) for doc in docs if doc.get("claim_token") == token}
        return [mine[run_id] for run_id in ids if run_id in mine]

    @staticmethod
    def _claim_fields(worker: str, lease_s: float, now: datetime, outlives_lease_s: float | None) -> dict[str, Any]:
        """What a claim sets: running, on ``worker``, claimed ``now``, leased for ``lease_s``; and, when
        given, how long the script may outlive the lease (set before the script starts: a run whose
        worker vanished before its start was stored is still retried only once that copy is dead)."""
        fields = {"status": RunStatus.RUNNING.value, "worker": worker, "claimed_at": now,
                  "lease_until": now + timedelta(seconds=lease_s)}
        if outlives_lease_s is not None:
            fields["outlives_lease_s"] = outlives_lease_s
        return fields

    def mark_started(self, run_id: str, *, pid: int, commit: str | None, now: datetime | None = None,
                     host: str | None = None, pid_started_at: float | None = None, pgid: int | None = None,
                     supervisor_pid: int | None = None, supervisor_started_at: float | None = None) -> None:
        """The script's process exists: :meth:`record_started` of :meth:`start_fields`."""
        self.record_started(run_id, self.start_fields(
            pid=pid, commit=commit, now=now or self.store.clock.now(), host=host, pid_started_at=pid_started_at,
            pgid=pgid, supervisor_pid=supervisor_pid, supervisor_started_at=supervisor_started_at))

    @staticmethod
    def start_fields(*, pid: int, commit: str | None, now: datetime, host: str | None = None,
                     pid_started_at: float | None = None, pgid: int | None = None, supervisor_pid: int | None = None,
                     supervisor_started_at: float | None = None) -> dict[str, Any]:
        """A run's start record: ``pid``, ``started_at`` (``now``), ``commit`` and what identifies the process.

        ``host``, ``pid_started_at`` (the process's create time, epoch seconds), ``pgid``,
        ``supervisor_pid`` and ``supervisor_started_at`` let a later worker on that host verify a
        pid before it kills anything (a pid alone may have been recycled); those given are set. How long
        the script may outlive its lease is the claim's (:meth:`take`). Stored by :meth:`record_started`,
        or with the run's end (:meth:`finish`'s ``fields``).
        """
        fields: dict[str, Any] = {"pid": pid, "started_at": now, "commit": commit}
        identity = {"host": host, "pid_started_at": pid_started_at, "pgid": pgid, "supervisor_pid": supervisor_pid,
                    "supervisor_started_at": supervisor_started_at}
        fields.update({name: value for name, value in identity.items() if value is not None})
        return fields

    def record_started(self, run_id: str, fields: dict[str, Any]) -> None:
        """Store a start record (:meth:`start_fields`); starts made at nearly the same moment share one write."""
        self._starts.submit((run_id, fields))

    def _set_each(self, changes: builtins.list[tuple[str, dict[str, Any]]]) -> builtins.list[None]:
        """``$set`` each (run id, fields) in one unordered bulk write."""
        bulk_write(self.store, self.collection, [Update({"_id": run_id}, {"$set": fields}) for run_id, fields in changes])
        return [None] * len(changes)

    def mark_started_in_worker(self, run_id: str, *, commit: str | None, now: datetime | None = None,
                               host: str | None = None) -> None:
        """An HTTP job's run started inside its worker: no process of its own, so no pid a later worker
        could kill. Changes ``started_at``, ``commit`` and ``host`` (how long past its lease's expiry a
        cut-off worker may still make the run's requests is the claim's, as for any run: :meth:`take`)."""
        self._update(run_id, {"started_at": now or self.store.clock.now(), "commit": commit, "host": host})

    def mark_process_gone(self, run_id: str) -> None:
        """A worker on the run's host confirmed none of its processes is left. Sets ``process_gone``."""
        self._update(run_id, {"process_gone": True})

    def lost_on_host(self, host: str) -> builtins.list[Run]:
        """Lost runs whose processes on ``host`` nobody has confirmed gone yet (``process_gone`` unset)."""
        # Status comes from its index (schema.eq); host and process_gone are checked here: lost runs are few.
        fields = ("job", "status", "worker", "host", "pid", "pid_started_at", "pgid", "supervisor_pid",
                  "supervisor_started_at", "process_gone")
        docs = self.store.retry(lambda: list(self.collection.find({"status": schema.eq(RunStatus.LOST.value)},
                                                                  dict.fromkeys(fields, 1))))
        return [Run.from_doc(d) for d in docs if d.get("host") == host and not d.get("process_gone")]

    def set_progress(self, run_id: str, current: float, maximum: float) -> None:
        """Changes ``progress`` to {current, max}."""
        self._update(run_id, {"progress": {"current": current, "max": maximum}})

    def add_note(self, run_id: str, note: str) -> None:
        """Sets ``note``: one line a person should read about the run (limit hit, lost, …)."""
        self._update(run_id, {"note": note})

    def finish(self, run_id: str, status: RunStatus, *, now: datetime, exit_code: int | None = None,
               note: str | None = None, started_at: datetime | None = None,
               only_from: frozenset[RunStatus] = ACTIVE, fields: dict[str, Any] | None = None) -> Run | None:
        """Record the end of a run that is in one of ``only_from``; None if it was not (ended already).

        ``started_at`` (when the caller knows it) saves reading the run first.
        Changes ``status``, ``exit_code``, ``finished_at``, ``duration_s`` (when it had started),
        ``lease_until`` (cleared), ``note`` and any ``fields`` given.
        """
        changes: dict[str, Any] = {"status": status.value, "exit_code": exit_code, "finished_at": now,
                                   "lease_until": None, **(fields or {})}
        started = started_at
        if started is None and RunStatus.RUNNING in only_from:
            found = self.find(run_id)
            started = found.started_at if found else None
        if started is not None:
            changes["duration_s"] = max(0.0, (now - started).total_seconds())
        if note:
            changes["note"] = note
        doc = self.store.retry(lambda: self.collection.find_one_and_update(
            {"_id": run_id, "status": {"$in": RunStatus.values(only_from)}}, {"$set": changes},
            return_document=ReturnDocument.AFTER))
        return Run.from_doc(doc) if doc else None

    def retarget(self, run_id: str, target: str | None, *, only_from: frozenset[RunStatus], note: str) -> Run | None:
        """Aim a run that is in one of ``only_from`` at ``target``; None if it was not (claimed or ended).

        Changes ``target`` and ``note``.
        """
        doc = self.store.retry(lambda: self.collection.find_one_and_update(
            {"_id": run_id, "status": {"$in": RunStatus.values(only_from)}}, {"$set": {"target": target, "note": note}},
            return_document=ReturnDocument.AFTER))
        return Run.from_doc(doc) if doc else None

    def mark_relocated(self, run_id: str, new_run_id: str, *, note: str) -> None:
        """The run continues as ``new_run_id`` on another worker. Sets ``relocated_to`` and ``note``."""
        self._update(run_id, {"relocated_to": new_run_id, "note": note})

    def flag_cancel(self, run_id: str, *, by: str) -> Run | None:
        """Ask the worker of a running run to stop it; None unless it is running.

        Changes ``cancel_requested``/``cancelled_by``.
        """
        doc = self.store.retry(lambda: self.collection.find_one_and_update(
            {"_id": run_id, "status": RunStatus.RUNNING.value}, {"$set": {"cancel_requested": True, "cancelled_by": by}},
            return_document=ReturnDocument.AFTER))
        return Run.from_doc(doc) if doc else None

    def cancel_requested(self, run_ids: builtins.list[str]) -> builtins.list[str]:
        """Which of these runs someone asked to cancel."""
        if not run_ids:
            return []
        return [d["_id"] for d in self.store.retry(lambda: list(self.collection.find(
            {"_id": {"$in": run_ids}, "cancel_requested": True}, {"_id": 1})))]

    def still_running(self, worker: str, run_ids: builtins.list[str]) -> dict[str, dict]:
        """Which of these runs are still running on ``worker`` (by id), with ``cancel_requested``/``cancelled_by``.

        A run missing from the answer was ended elsewhere (cancelled before it started, marked lost …).
        """
        if not run_ids:
            return {}
        docs = self.store.retry(lambda: list(self.collection.find(
            {"_id": {"$in": run_ids}, "worker": worker, "status": RunStatus.RUNNING.value},
            {"_id": 1, "cancel_requested": 1, "cancelled_by": 1})))
        return {doc["_id"]: doc for doc in docs}

    def renew_leases(self, worker: str, run_ids: builtins.list[str], lease_s: float, *, now: datetime) -> None:
        """Extend ``lease_until`` of this worker's running runs (called with each heartbeat)."""
        if not run_ids:
            return
        self.store.retry(lambda: self.collection.update_many(
            {"_id": {"$in": run_ids}, "worker": worker, "status": RunStatus.RUNNING.value},
            {"$set": {"lease_until": now + timedelta(seconds=lease_s)}}))

    def expired_leases(self, *, now: datetime) -> builtins.list[Run]:
        """Running runs whose worker stopped renewing their lease."""
        return self._runs({"status": schema.eq(RunStatus.RUNNING.value), "lease_until": {"$lt": now}})

    def mark_waiters(self, job: str) -> None:
        """Flag the job's queued and running runs: a run now waits behind them (``has_waiters``).

        The end of a flagged run releases the oldest waiting one; the end of any other run
        needs no look for waiting runs, which saves every run end a query. Called after the
        waiting run is stored and before the caller checks once more whether it may go at once,
        so a run that ends in between is covered by that check.
        """
        self.store.retry(lambda: self.collection.update_many(
            {"job": job, "status": {"$in": RunStatus.values(BUSY)}}, {"$set": {"has_waiters": True}}))

    def promote_waiting(self, job: str, *, now: datetime) -> Run | None:
        """If no run of ``job`` is queued or running, move its oldest waiting run to queued (``status``, ``not_before``).

        Otherwise the runs it waits behind are flagged ``has_waiters`` (see :meth:`mark_waiters`).
        """
        # Most databases have no waiting run at all: one indexed status lookup (schema.eq) says so.
        if self.store.retry(lambda: self.collection.find_one({"status": schema.eq(RunStatus.WAITING.value)}, {"_id": 1})) is None:
            return None
        def busy() -> bool:
            return self.store.retry(lambda: self.collection.find_one(
                {"job": job, "status": {"$in": RunStatus.values(BUSY)}}, {"_id": 1})) is not None

        if busy():
            # The waiting run now waits behind these (a retry, a manual run): their ends release it.
            # Flag, then look again, so one that ended in between is not waited for.
            self.mark_waiters(job)
            if busy():
                return None
        doc = self.store.retry(lambda: self.collection.find_one_and_update(
            {"job": schema.eq(job), "status": schema.eq(RunStatus.WAITING.value)},
            {"$set": {"status": RunStatus.QUEUED.value, "not_before": now}},
            sort=[("queued_at", 1)], return_document=ReturnDocument.AFTER))
        return Run.from_doc(doc) if doc else None

    # -- reading ------------------------------------------------------------
    def find(self, run_id: str) -> Run | None:
        """The run with exactly this id, or None."""
        doc = self.store.retry(lambda: self.collection.find_one({"_id": run_id}))
        return Run.from_doc(doc) if doc else None

    def get(self, ref: str) -> Run:
        """The run ``ref`` names: its id, ``JOB#N`` or ``JOB:N``, or a unique id prefix or suffix of 6+ characters.

        The one resolver of what people type for a run (the CLI, the web routes and the
        API call it; the forms are :func:`sooner.model.run_ref.parse_run_ref`'s).
        RunNotFound, or SoonerError when a prefix or suffix matches several runs.
        """
        run = self.find(ref)
        if run is not None:
            return run
        parsed = parse_run_ref(ref)
        if parsed.job is not None and parsed.number is not None:
            return self._numbered_run(ref, parsed.job, parsed.number)
        if parsed.partial is not None:
            return self._partial_id(ref, parsed.partial)
        raise RunNotFound(ref, None if re.fullmatch(r"[0-9a-fA-F]{24}", ref) else f"give {FORMS}")

    def _numbered_run(self, ref: str, job: str, number: int) -> Run:
        doc = self.store.retry(lambda: self.collection.find_one({"job": job, "number": number}))
        if doc:
            return Run.from_doc(doc)
        last = self.store.counters.last_run_number(job)
        raise RunNotFound(ref, f"job {job!r} has no run #{number} (its runs are numbered up to #{last})" if last
                          else f"job {job!r} has no numbered runs")

    def _partial_id(self, ref: str, partial: str) -> Run:
        # Both are collection scans on the embedded server (~200 ms at 20,000 runs): for old habits only.
        found: dict[str, Run] = {}
        for pattern in (f"^{partial}", f"{partial}$"):
            docs = self.store.retry(lambda: list(self.collection.find({"_id": {"$regex": pattern}}, limit=3)))
            found.update((str(doc["_id"]), Run.from_doc(doc)) for doc in docs)
        if len(found) == 1:
            return next(iter(found.values()))
        if found:
            shown = ", ".join(f"{run.ref} ({run.id})" for run in list(found.values())[:3])
            raise SoonerError(f"run id part {ref!r} is ambiguous: it starts or ends several run ids ({shown}); "
                              f"give the run as JOB#N or its full id")
        raise RunNotFound(ref, "no run id starts or ends with it")

    def active_count(self, job: str) -> int:
        """How many runs of ``job`` are waiting, queued or running."""
        return len(self.store.retry(lambda: list(self.collection.find(
            {"job": job, "status": {"$in": RunStatus.values(ACTIVE)}}, {"_id": 1}).limit(1000))))

    def list(self, *, job: str | None = None, status: RunStatus | str | None = None, limit: int = 50,
             before: str | None = None) -> builtins.list[Run]:
        """Newest first; ``before`` (a run id) pages backwards."""
        query: dict[str, Any] = {}
        if job:
            query["job"] = job
        if status:
            query["status"] = RunStatus(status).value
        if before:
            query["_id"] = {"$lt": before}
        return self.store.retry(lambda: [Run.from_doc(d) for d in self.collection.find(query).sort("_id", -1)
                                         .limit(limit)])

    def running(self, worker: str | None = None) -> builtins.list[Run]:
        """Running runs (of ``worker``, if given)."""
        query: dict[str, Any] = {"status": schema.eq(RunStatus.RUNNING.value)}
        if worker is not None:
            query["worker"] = schema.eq(worker)
        return self._runs(query)

    def last_per_job(self, jobs: builtins.list[str]) -> dict[str, Run]:
        """The newest run of each named job."""
        result: dict[str, Run] = {}
        for job in jobs:
            doc = self.store.retry(lambda: self.collection.find_one({"job": job}, sort=[("queued_at", -1)]))
            if doc:
                result[job] = Run.from_doc(doc)
        return result

    def _runs(self, query: dict[str, Any]) -> builtins.list[Run]:
        return self.store.retry(lambda: [Run.from_doc(d) for d in self.collection.find(query)])

    def _update(self, run_id: str, fields: dict[str, Any]) -> None:
        self.store.retry(lambda: self.collection.update_one({"_id": run_id}, {"$set": fields}))
