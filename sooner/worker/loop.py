"""The worker: registers its name, claims runs up to its capacity, heartbeats, shuts down cleanly.

:meth:`Worker.run_batch` claims and starts as many runs as there is room for, in one round trip
(each run then lives on its own thread, see :mod:`sooner.worker.runner`); :meth:`Worker.run_once`
starts at most one;
:meth:`Worker.heartbeat` renews leases, applies cancel requests and records
load. :meth:`Worker.run_forever` is the small loop around them: claim while
there is room, otherwise wait for a run to finish or the next poll, heartbeat
every ``heartbeat_s``; when asked to stop it lets running runs finish for
``shutdown_grace_s``, cancels the rest and unregisters.

Under :meth:`Worker.run_forever` each run is fenced by its lease: a script
whose lease this worker could not renew is stopped when the lease expires, so
a retry that waits for the expiry (plus ``cancel_grace_s``) never runs beside
it. :meth:`Worker.register` cleans up after a predecessor on the same host:
it kills the verified processes of runs it left (see
:func:`sooner.worker.supervise.stop_recorded`) and removes socket
directories no live run uses.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import stat
import tempfile
import threading
import time
import uuid
import zlib
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

import psutil

from sooner import __version__
from sooner.clock import Clock
from sooner.errors import StoreError, StoreUnreachable
from sooner.metrics import Publisher
from sooner.runs import doorbell
from sooner.model import Run, RunStatus, Worker as WorkerRecord
from sooner.model.dispatch import Candidate
from sooner.model.http_job import JobKind
from sooner.runs.facts import JobFacts
from sooner.model.sample import Sample
from sooner.runs.service import RunService
from sooner.worker.dispatching import Dispatcher
from sooner.worker.journal import replay_left_journals
from sooner.worker.rpc import SOCKET_NAME
from sooner.worker.runner import ActiveRun, Runner
from sooner.worker.sampling import WorkerSampler
from sooner.worker.supervise import process_matching, stop_recorded
from sooner.worker.tree import TreeCache, default_cache_dir

if TYPE_CHECKING:
    from sooner.config import Settings
    from sooner.store import Store

logger = logging.getLogger(__name__)

POLL_S = 0.025  # how often an idle worker looks for queued runs
STORE_BACKOFF_S = 1.0  # pause after the database failed in the loop
SHUTDOWN_NOTE = "worker shut down"
SOCKET_DIR_PREFIX = "sooner-rpc-"
# A socket directory without its socket may be one a run is creating right now.
EMPTY_SOCKET_DIR_AGE_S = 60.0
BIND_TO_LISTEN_S = 5.0
ENDED_SAMPLES = 5000  # at most this many samples of ended runs wait for the next stored batch
# After a claim lost to another worker, for this long each look at the queue starts at this worker's own place.
CONTENDED_S = 5.0


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
        self.runner = runner or Runner(store, settings, name, self.trees, service=self.service, host=self.host)
        self.link = self.runner.link
        self.metrics = Publisher(store, "worker", name)  # this process's counters, for /metrics
        self.sampler = WorkerSampler(name, settings.sample_s, self.clock.now)  # monitoring: host and this process
        self._ended_samples: list[Sample] = []  # samples of runs that ended since the last stored batch
        self.lost_name = False
        self._fencing = False  # set by run_forever: runs stop when their lease could not be renewed
        self.registered = False
        self.finished = threading.Event()  # set whenever a run ends (a slot is free) or this process queues one
        doorbell.listen(self.finished)
        self._active: dict[str, ActiveRun] = {}
        self._candidates: deque[Candidate] = deque()
        self._facts: dict[str, JobFacts] = {}  # the candidates' jobs, read with them (several candidates only)
        # Workers that compete for one queue would all try its oldest run first, and all but one lose
        # (a claim and a query each, wasted): once this one has lost, it starts each look at its own place.
        self._contended_until = 0.0
        self._place = zlib.crc32(name.encode())
        # Load-aware dispatch: the fleet as the last heartbeat read it, this worker's speed (docs: "Dispatch").
        self.dispatch = Dispatcher(store, settings, name, self.capacity, self.tags)
        self._lock = threading.Lock()
        self._process = psutil.Process()
        self._process.cpu_percent(None)  # the first sample starts the measurement

    # -- registration ------------------------------------------------------
    def register(self) -> WorkerRecord:
        """Take the worker's name in ``workers``; WorkerError if a live worker holds it."""
        doc = self.store.workers.register(
            self.name, instance=self.instance, host=self.host, pid=os.getpid(), capacity=self.capacity,
            tags=self.tags, version=__version__, stale_after_s=self.settings.lease_s, now=self.clock.now(),
            pid_started_at=self._process.create_time(), holder_gone=self._holder_gone)
        self.registered = True
        # Journals a predecessor left (it died during an outage) hold output and perhaps the end of
        # runs that are still marked running: store them first, then end what is left as lost.
        replay_left_journals(self.runner.journal_dir, self.service)
        self._recover_orphans()
        self._stop_lost_runs()
        remove_stale_socket_dirs(self.runner.socket_dir)
        return doc

    def _holder_gone(self, holder: WorkerRecord) -> bool:
        """Whether the process holding our name is certainly dead: it ran on this host and its pid is gone."""
        if holder.host != self.host or holder.pid is None:
            return False
        started = holder.extra.get("pid_started_at")
        return process_matching(holder.pid, started if isinstance(started, (int, float)) else None) is None

    def _recover_orphans(self) -> None:
        # Runs still marked running under this name belong to a predecessor that died (a live
        # one would have kept the name): kill what is left of them here, then end them now
        # instead of after their lease. Taking the name from another host needed its heartbeat
        # to be older than the lease, so its leases have expired and it fenced its scripts.
        for run in self.store.runs.running(worker=self.name):
            if run.id not in self._active:
                logger.warning("run %s was running on the previous worker %s; marking it lost", run.id, self.name)
                if run.host == self.host and self._stop_processes(run):
                    self.store.runs.mark_process_gone(run.id)
                self.service.finish(run.id, RunStatus.LOST, note=f"worker {self.name} restarted while it ran")

    def _stop_lost_runs(self) -> None:
        """Kill verified processes of this host's lost runs (their worker died or was cut off)."""
        for run in self.store.runs.lost_on_host(self.host):
            if self._stop_processes(run):
                self.store.runs.mark_process_gone(run.id)

    def _stop_processes(self, run: Run) -> bool:
        """Kill what still runs of ``run`` on this host; True when none of its recorded processes is left."""
        killed, gone = stop_recorded(run.id, (run.supervisor_pid, run.supervisor_started_at),
                                     (run.pid, run.pid_started_at), run.pgid)
        if killed:
            logger.warning("run %s: killed processes %s its worker left%s", run.id, killed,
                           "" if gone else " (some survive)")
        return gone

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

    def room(self) -> int:
        """How many more runs fit now (capacity minus the runs executing)."""
        with self._lock:
            return self.capacity - len(self._active)

    def has_room(self) -> bool:
        return self.room() > 0

    def run_once(self) -> Run | None:
        """Claim one queued run this worker may take and start it (non-blocking); None if none or full."""
        started = self.run_batch(limit=1)
        return started[0] if started else None

    def run_batch(self, limit: int | None = None) -> list[Run]:
        """Claim as many queued runs as there is room for (at most ``limit``) and start them (non-blocking).

        Runs that count against no concurrency limit are claimed in one update and one read, however many.
        """
        room = self.room()
        if limit is not None:
            room = min(room, limit)
        if self.lost_name or room <= 0:
            return []
        claimed_at = time.monotonic()
        runs = self._claim(room)
        for run in runs:
            self._start(run, claimed_at)
        return runs

    def _start(self, run: Run, claimed_at: float) -> None:
        try:
            active = self.runner.prepare(run, on_done=self._run_done, facts=self._facts.get(run.job))
        except OSError as exc:  # out of file descriptors or the like: do not leave the run claimed
            logger.error("cannot start run %s: %s", run.id, exc)
            self.service.finish(run.id, RunStatus.FAILED, note=f"worker {self.name} could not start it: {exc}")
            return
        if self._fencing:
            active.renewed(claimed_at)
        with self._lock:
            self._active[run.id] = active
        active.start()
        logger.info("started run %s of %s", run.id, run.job)

    def _claim(self, room: int) -> list[Run]:
        # Candidates from one query serve a burst of claims (one round trip for all that fit
        # instead of two each); a run someone else took means a competitor is active, so look again.
        # Candidates a faster worker should get are held back (at most dispatch_hold_ms).
        for _ in range(2):
            if not self._candidates:
                offers = self.service.claim_offers(self.name, self.tags)
                self._candidates = deque(self.dispatch.choose(offers, self.clock.now()))
                if not self._candidates:
                    return []
                if time.monotonic() < self._contended_until:
                    self._candidates.rotate(-(self._place % len(self._candidates)))
                self._facts = self._read_facts(self._candidates)
            full: set[str] = set()  # concurrency limits found full: their other runs are not tried now
            while self._candidates:
                batch = [self._candidates.popleft() for _ in range(min(room, len(self._candidates)))]
                results = self.service.take_offers(batch, self.name, self.settings.lease_s, full)
                runs = [result for result in results if isinstance(result, Run)]
                if any(result is None for result in results):  # lost a race: look again next time
                    self._candidates.clear()
                    self._contended_until = time.monotonic() + CONTENDED_S
                    if runs:
                        return runs
                    break
                if runs:
                    return runs
            else:
                return []  # the rest wait for concurrency limits
        return []

    def _read_facts(self, candidates: Iterable[Candidate]) -> dict[str, JobFacts]:
        """Facts of the candidates' script jobs in one query when there are several runs to claim.

        One candidate reads its own once its script runs (off the path to its start); a
        burst of them shares this read instead of one per run (sooner.runs.facts).
        """
        jobs = {c.job for c in candidates if JobKind.of(c.job) is JobKind.SCRIPT}
        if len([c for c in candidates if c.job in jobs]) < 2:
            return {}
        return JobFacts.read_many(self.store, jobs)

    def heartbeat(self) -> bool:
        """Renew leases, apply cancel requests, record load. False if another process took the name."""
        running = self.running
        now, renewing = self.clock.now(), time.monotonic()
        self.store.runs.renew_leases(self.name, running, self.settings.lease_s, now=now)
        if self._fencing:
            for run_id in running:
                if (renewed := self.active(run_id)) is not None:
                    renewed.renewed(renewing)
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
        beat = self.store.workers.heartbeat(self.name, self.instance, running=running,
                                            stats={**self.stats(), "speed": self.dispatch.speed}, now=now)
        self.dispatch.refresh(now)  # the fleet as it heartbeats (one read), for the next claims
        self.link.answered()  # after the leases were renewed: now runs replay their journals
        self.metrics.maybe_publish()
        self._store_samples()
        if not beat:
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

    def _store_samples(self) -> None:
        """Every ``sample_s``: the host's, this process's and the runs' samples, in one insert (no extra round trip)."""
        if not self.sampler.due():
            return
        samples = self.sampler.sample()
        with self._lock:
            actives = list(self._active.values())
            samples += self._ended_samples
            self._ended_samples = []
        for active in actives:
            samples += active.usage.take_samples()
        try:
            self.store.samples.insert(samples)
        except StoreUnreachable:
            raise
        except StoreError as exc:  # monitoring is not worth a heartbeat: these samples are dropped
            logger.warning("worker %s: could not store %d monitoring samples: %s", self.name, len(samples), exc)

    def cancel_all(self, note: str = SHUTDOWN_NOTE) -> None:
        with self._lock:
            runs = list(self._active.values())
        for active in runs:
            active.cancel(note, RunStatus.CANCELLED)

    def _run_done(self, active: ActiveRun) -> None:
        with self._lock:
            self._active.pop(active.id, None)
            self._ended_samples = (self._ended_samples + active.usage.take_samples())[-ENDED_SAMPLES:]
        self.finished.set()

    # -- the loop -------------------------------------------------------------
    def run_forever(self, stop_event: threading.Event, hurry_event: threading.Event | None = None) -> None:
        """Claim and heartbeat until ``stop_event`` is set (or the name is lost), then :meth:`shutdown`.

        ``hurry_event`` (a second Ctrl-C) cancels running runs without waiting for the grace period.
        """
        self._fencing = True
        self.runner.launcher.warm()
        # Runs queued by other processes on this host ring it too, instead of waiting for the next poll.
        bell = doorbell.HostBell.open(self.store, self.finished)
        try:
            self._loop(stop_event)
        finally:
            if bell is not None:
                bell.close()
        self.shutdown(stop_event=hurry_event)

    def _loop(self, stop_event: threading.Event) -> None:
        next_beat = 0.0
        while not stop_event.is_set() and not self.lost_name:
            now = time.monotonic()
            if now >= next_beat:
                next_beat = now + self.settings.heartbeat_s
                self._guarded(self.heartbeat)
            self.finished.clear()
            # No claims while the database is down: each would wait out the store's retries.
            claimed = -1 if self.link.down else self._guarded(self._claim_while_room)
            if claimed == -1:
                stop_event.wait(STORE_BACKOFF_S)
            elif not claimed or not self.has_room():
                wait = next_beat - time.monotonic()
                if self.has_room():
                    wait = min(wait, self.poll_s)
                self.finished.wait(max(0.0, wait))

    def _claim_while_room(self) -> int:
        count = 0
        while started := self.run_batch():
            count += len(started)
        return count

    def _guarded(self, step: Callable[[], Any]) -> Any:
        try:
            return step()
        except StoreError as exc:
            if isinstance(exc, StoreUnreachable):
                self.link.failed(exc)
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
        if self.running:  # ended, but the database is away: their journals wait for the next start
            with self._lock:
                waiting = list(self._active.values())
            for active in waiting:
                active.abandon()
            self._wait_for_runs(time.monotonic() + 5, None)
        if self.running:
            logger.error("worker %s: runs %s did not end; their leases will expire", self.name, self.running)
        if not self.lost_name:
            self._guarded(self.unregister)
        self.runner.close()

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


def remove_stale_socket_dirs(parent: str | None = None) -> list[str]:
    """Remove this user's ``sooner-rpc-*`` directories under ``parent`` whose socket nobody serves any more.

    A live run's server listens on its socket until the run ends, so a socket no one
    listens on belongs to a run whose worker was killed. Returns the removed paths.
    """
    parent = parent or tempfile.gettempdir()
    try:
        names = [n for n in os.listdir(parent) if n.startswith(SOCKET_DIR_PREFIX)]
    except OSError:
        return []
    served = _served_socket_paths()
    removed = []
    for name in names:
        directory = os.path.join(parent, name)
        if _socket_dir_is_stale(directory, served):
            shutil.rmtree(directory, ignore_errors=True)
            removed.append(directory)
    if removed:
        logger.info("removed %d socket directories left by killed runs", len(removed))
    return removed


def _socket_dir_is_stale(directory: str, served: set[str] | None) -> bool:
    try:
        info = os.lstat(directory)
    except OSError:
        return False
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        return False
    path = os.path.join(directory, SOCKET_NAME)
    try:
        sock = os.lstat(path)
    except FileNotFoundError:
        return time.time() - info.st_mtime > EMPTY_SOCKET_DIR_AGE_S
    except OSError:
        return False
    if not stat.S_ISSOCK(sock.st_mode):
        return False
    if served is not None and os.path.realpath(path) in served:
        return False
    if served is None and time.time() - sock.st_mtime < BIND_TO_LISTEN_S:
        return False  # without /proc a socket bound this instant may not listen yet
    return _refused(path)


def _refused(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
        return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    finally:
        probe.close()


def _served_socket_paths() -> set[str] | None:
    """Resolved paths of run sockets bound in this network namespace (Linux), or None where unknown."""
    try:
        with open("/proc/net/unix") as table:
            rows = table.read().splitlines()[1:]
    except OSError:
        return None
    paths = (fields[7] for row in rows if len(fields := row.split(None, 7)) == 8)
    return {os.path.realpath(path) for path in paths if os.path.basename(path) == SOCKET_NAME}


def start_worker(store: Store, settings: Settings, name: str, **options: Any) -> Worker:
    """A registered Worker (WorkerError if the name is taken by a live worker)."""
    worker = Worker(store, settings, name, **options)
    worker.register()
    return worker
