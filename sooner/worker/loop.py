"""The worker: registers its name, claims runs up to its capacity, heartbeats, shuts down cleanly.

:meth:`Worker.run_once` claims and starts at most one run (each run then
lives on its own thread, see :mod:`sooner.worker.runner`);
:meth:`Worker.heartbeat` renews leases, applies cancel requests and records
load. :meth:`Worker.run_forever` is the small loop around them: claim while
there is room, otherwise wait for a run to finish or the next poll, heartbeat
every ``heartbeat_s``; when asked to stop it lets running runs finish for
``shutdown_grace_s``, cancels the rest and unregisters.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

import psutil

from sooner import __version__
from sooner.clock import Clock
from sooner.errors import StoreError
from sooner.model import Run, RunStatus, Worker as WorkerRecord
from sooner.runs.service import RunService
from sooner.worker.runner import ActiveRun, Runner
from sooner.worker.tree import TreeCache, default_cache_dir

if TYPE_CHECKING:
    from sooner.config import Settings
    from sooner.store import Store

logger = logging.getLogger(__name__)

POLL_S = 0.025  # how often an idle worker looks for queued runs
STORE_BACKOFF_S = 1.0  # pause after the database failed in the loop
SHUTDOWN_NOTE = "worker shut down"


def cache_dir_for(settings: Settings) -> Path:
    """The site's cache folder, or the user's cache for a worker without a site."""
    if settings.site_dir is not None:
        return settings.site_path(settings.cache_dir)
    return default_cache_dir()


class Worker:
    """One named worker process. Pass ``clock``, ``cache`` or ``runner`` to replace the defaults.

    ``clock`` (default: the store's) gives every time the worker records
    (claims, leases, heartbeats). Waiting on scripts and events -- the loop's
    pacing, the shutdown grace -- is real monotonic time, because that is the
    time real processes run in.
    """

    def __init__(self, store: Store, settings: Settings, name: str, capacity: int | None = None,
                 tags: Iterable[str] = (), *, clock: Clock | None = None, cache: Path | None = None,
                 runner: Runner | None = None, poll_s: float = POLL_S, host: str | None = None,
                 service: RunService | None = None) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock or store.clock
        self.service = service or RunService(store, settings, self.clock)
        self.name = name
        self.capacity = capacity or settings.worker_capacity
        self.tags = sorted({t for t in tags if t})
        self.poll_s = poll_s
        self.host = host or socket.gethostname()
        self.instance = uuid.uuid4().hex
        self.trees = TreeCache(store, Path(cache) if cache else cache_dir_for(settings))
        self.runner = runner or Runner(store, settings, name, self.trees, service=self.service)
        self.lost_name = False
        self.registered = False
        self.finished = threading.Event()  # set whenever a run ends (a slot is free)
        self._active: dict[str, ActiveRun] = {}
        self._candidates: deque[str] = deque()
        self._lock = threading.Lock()
        self._process = psutil.Process()
        self._process.cpu_percent(None)  # the first sample starts the measurement

    # -- registration ------------------------------------------------------
    def register(self) -> WorkerRecord:
        """Take the worker's name in ``workers``; WorkerError if a live worker holds it."""
        doc = self.store.workers.register(
            self.name, instance=self.instance, host=self.host, pid=os.getpid(), capacity=self.capacity,
            tags=self.tags, version=__version__, stale_after_s=self.settings.lease_s, now=self.clock.now())
        self.registered = True
        self._recover_orphans()
        return doc

    def _recover_orphans(self) -> None:
        # Runs still marked running under this name belong to a predecessor that died
        # (a live one would have kept the name): end them now instead of after their lease.
        for run in self.store.runs.running(worker=self.name):
            if run.id not in self._active:
                logger.warning("run %s was running on the previous worker %s; marking it lost", run.id, self.name)
                self.service.finish(run.id, RunStatus.LOST, note=f"worker {self.name} restarted while it ran")

    def unregister(self) -> None:
        if self.registered:
            self.store.workers.unregister(self.name, self.instance, now=self.clock.now())
            self.registered = False

    # -- one step ----------------------------------------------------------
    @property
    def running(self) -> list[str]:
        """Ids of the runs executing now."""
        with self._lock:
            return list(self._active)

    def active(self, run_id: str) -> ActiveRun | None:
        with self._lock:
            return self._active.get(run_id)

    def has_room(self) -> bool:
        with self._lock:
            return len(self._active) < self.capacity

    def run_once(self) -> Run | None:
        """Claim one queued run this worker may take and start it (non-blocking); None if none or full."""
        if self.lost_name or not self.has_room():
            return None
        run = self._claim()
        if run is None:
            return None
        try:
            active = self.runner.prepare(run, on_done=self._run_done)
        except OSError as exc:  # out of file descriptors or the like: do not leave the run claimed
            logger.error("cannot start run %s: %s", run.id, exc)
            self.service.finish(run.id, RunStatus.FAILED, note=f"worker {self.name} could not start it: {exc}")
            return run
        with self._lock:
            self._active[run.id] = active
        active.start()
        logger.info("started run %s of %s", run.id, run.job)
        return run

    def _claim(self) -> Run | None:
        # Candidates from one query serve a burst of claims (one round trip each instead
        # of two); a run someone else took means a competitor is active, so look again.
        for _ in range(2):
            if not self._candidates:
                self._candidates = deque(self.service.claim_candidates(self.name, self.tags))
                if not self._candidates:
                    return None
            while self._candidates:
                run = self.service.take(self._candidates.popleft(), self.name, self.settings.lease_s)
                if run is not None:
                    return run
                self._candidates.clear()
        return None

    def heartbeat(self) -> bool:
        """Renew leases, apply cancel requests, record load. False if another process took the name."""
        running = self.running
        now = self.clock.now()
        self.store.runs.renew_leases(self.name, running, self.settings.lease_s, now=now)
        states = self.store.runs.still_running(self.name, running)
        for run_id in running:
            active, state = self.active(run_id), states.get(run_id)
            if active is None or active.done.is_set():
                continue
            if state is None:
                # Ended elsewhere (marked lost while this worker was unreachable …): its retry
                # may be running on another worker already, so this copy must stop.
                active.cancel("the run was ended elsewhere (see its status); stopping this copy")
            elif state.get("cancel_requested"):
                active.cancel(f"cancelled by {state.get('cancelled_by') or 'request'}")
        if not self.store.workers.heartbeat(self.name, self.instance, running=running, stats=self.stats(), now=now):
            if not self.lost_name:
                logger.error("worker %s: another process took the name %r; no new runs will start here",
                             self.instance[:8], self.name)
            self.lost_name = True
        return not self.lost_name

    def stats(self) -> dict[str, Any]:
        """CPU and memory samples of this process, for the ``workers`` document."""
        try:
            return {"cpu_percent": self._process.cpu_percent(None),
                    "rss_bytes": self._process.memory_info().rss}
        except psutil.Error:
            return {}

    def cancel_all(self, note: str = SHUTDOWN_NOTE) -> None:
        with self._lock:
            runs = list(self._active.values())
        for active in runs:
            active.cancel(note, RunStatus.CANCELLED)

    def _run_done(self, active: ActiveRun) -> None:
        with self._lock:
            self._active.pop(active.id, None)
        self.finished.set()

    # -- the loop -------------------------------------------------------------
    def run_forever(self, stop_event: threading.Event, hurry_event: threading.Event | None = None) -> None:
        """Claim and heartbeat until ``stop_event`` is set (or the name is lost), then :meth:`shutdown`.

        ``hurry_event`` (a second Ctrl-C) cancels running runs without waiting for the grace period.
        """
        next_beat = 0.0
        while not stop_event.is_set() and not self.lost_name:
            now = time.monotonic()
            if now >= next_beat:
                next_beat = now + self.settings.heartbeat_s
                self._guarded(self.heartbeat)
            self.finished.clear()
            claimed = self._guarded(self._claim_while_room)
            if claimed == -1:
                stop_event.wait(STORE_BACKOFF_S)
            elif not claimed or not self.has_room():
                wait = next_beat - time.monotonic()
                if self.has_room():
                    wait = min(wait, self.poll_s)
                self.finished.wait(max(0.0, wait))
        self.shutdown(stop_event=hurry_event)

    def _claim_while_room(self) -> int:
        count = 0
        while self.run_once() is not None:
            count += 1
        return count

    def _guarded(self, step: Callable[[], Any]) -> Any:
        try:
            return step()
        except StoreError as exc:
            logger.warning("worker %s: %s", self.name, exc)
            return -1

    def shutdown(self, grace_s: float | None = None, stop_event: threading.Event | None = None) -> None:
        """Stop: let runs finish for ``grace_s`` (default shutdown_grace_s), cancel the rest, unregister.

        Heartbeats continue meanwhile so leases do not expire. Setting ``stop_event`` ends the grace early.
        """
        grace = self.settings.shutdown_grace_s if grace_s is None else grace_s
        if self.running:
            logger.info("worker %s stopping: waiting up to %gs for %d run(s)", self.name, grace, len(self.running))
        self._wait_for_runs(time.monotonic() + grace, stop_event)
        if self.running:
            self.cancel_all(SHUTDOWN_NOTE)
            # SIGKILL follows after cancel_grace_s; leave time to record each run's end.
            self._wait_for_runs(time.monotonic() + self.settings.cancel_grace_s + 30, None)
        if self.running:
            logger.error("worker %s: runs %s did not end; their leases will expire", self.name, self.running)
        if not self.lost_name:
            self._guarded(self.unregister)

    def _wait_for_runs(self, deadline: float, stop_event: threading.Event | None) -> None:
        next_beat = time.monotonic() + self.settings.heartbeat_s
        while self.running and time.monotonic() < deadline:
            if stop_event is not None and stop_event.is_set():
                return
            now = time.monotonic()
            if now >= next_beat:
                next_beat = now + self.settings.heartbeat_s
                self._guarded(self.heartbeat)
            self.finished.clear()
            if self.running:
                until = min(deadline, next_beat, now + 0.1 if stop_event is not None else deadline)
                self.finished.wait(max(0.0, until - time.monotonic()))

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no run executes (for tests and benchmarks); True if idle in time."""
        deadline = time.monotonic() + timeout
        while self.running:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.finished.clear()
            if self.running:
                self.finished.wait(min(remaining, 0.5))
        return True


def start_worker(store: Store, settings: Settings, name: str, **options: Any) -> Worker:
    """A registered Worker (WorkerError if the name is taken by a live worker)."""
    worker = Worker(store, settings, name, **options)
    worker.register()
    return worker
