"""Run one claimed run: start its script, follow it, record how it ended.

:class:`Runner` prepares an :class:`ActiveRun` per claimed run; the run then
lives on its own thread. That thread starts the script under a supervisor
process (:mod:`sooner.worker.supervise`: argv[1] = the run's socket, cwd = the
materialised tree, its own session; the tree dies with the worker), then
waits in one ``select`` on stdout, stderr, the supervisor's status pipe and
a wake-up pipe: output, read in the order it arrived on the two pipes
(:class:`~sooner.worker.streams.ArrivalOrder`), goes through
:class:`~sooner.worker.streams.StreamDecoder` into the
:class:`~sooner.worker.output.OutputWriter`. While the database does not
answer, the run's writes go to its outage journal
(:mod:`sooner.worker.journal`), which the loop replays once it answers
again; a full journal pauses reading the script's pipes, and the run's end
waits in the journal until it is stored. Cancel requests, the run's
timeout, its job's memory limit and a lease this worker could not renew (for ``fence_s``) send
SIGTERM to the script's whole tree (its group and every descendant, including
those that left the group) and SIGKILL ``cancel_grace_s`` later; processes
left behind when the script exits are killed after :data:`LINGER_S`. The run
always ends through :meth:`sooner.runs.service.RunService.finish`. Times
recorded come from the service's clock; the select loop's deadlines are real
monotonic time, the time the script runs in.
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import signal
import socket
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import sooner
from sooner.errors import RunError, SoonerError, StoreUnreachable
from sooner.metrics import PROCESS
from sooner.model import Run, RunStatus
from sooner.model.run import RunUsage
from sooner.runs.facts import JobFacts
from sooner.runs.service import RunService
from sooner.model.http_job import JobKind
from sooner.worker.calls import CallHandler
from sooner.worker.journal import PROBE_S, RunJournal, StoreLink
from sooner.worker.output import OutputWriter
from sooner.worker.rpc import RpcServer
from sooner.worker.sampling import MONITOR_S, TreeUsage
from sooner.worker.streams import ArrivalOrder, StreamDecoder
from sooner.worker.supervise import SAMPLE_S, Launcher, Supervised, readable
from sooner.worker.tree import TreeCache

if TYPE_CHECKING:
    from sooner.config import Settings
    from sooner.store import Store

logger = logging.getLogger(__name__)

READ_BYTES = 64 * 1024
# How long after its spawn a run's start record (pid, host, process identity) waits before it is stored
# on its own: a script that ends sooner has it stored with its end, one write instead of two. The run is
# ``running`` from its claim, and the claim already says how long the script may outlive the lease; in
# this window the supervisor alone guards the tree (it kills it when the worker dies).
START_RECORD_S = 0.2
# After the script exits, how long processes it left behind may keep its pipes open.
LINGER_S = 1.0
MB = 1 << 20
SOONER_PACKAGE_PARENT = str(Path(sooner.__file__).resolve().parent.parent)


class Runner:
    """Turns claimed runs into running scripts for one worker."""

    def __init__(self, store: Store, settings: Settings, worker_name: str, trees: TreeCache, *,
                 service: RunService | None = None, socket_dir: str | None = None, host: str | None = None,
                 link: StoreLink | None = None, journal_dir: Path | None = None) -> None:
        self.store = store
        self.settings = settings
        self.worker_name = worker_name
        self.host = host or socket.gethostname()
        self.launcher = Launcher()
        self.trees = trees
        self.service = service or RunService(store, settings)
        self.clock = self.service.clock
        self.socket_dir = socket_dir
        self.base_env = script_environment(os.environ, store)
        # What the worker knows of its database, and where runs journal what it cannot take (an outage).
        self.link = link or StoreLink(store)
        self.journal_dir = journal_dir or journal_dir_for(trees.root, worker_name)
        # How HTTP jobs wait between a step's attempts (None: really, woken by cancel); tests pass a fake clock's.
        self.http_sleep: Callable[[float], None] | None = None
        self.start_record_s = START_RECORD_S

    def prepare(self, run: Run, on_done: Callable[[ActiveRun], None] | None = None,
                facts: JobFacts | None = None) -> ActiveRun:
        """An ActiveRun for ``run`` (claimed by this worker); call its ``start()``.

        ``facts``: its job's facts, read with the look at the queue that found the run; the run
        reads its own if they are missing or older than :data:`sooner.runs.facts.REUSE_S`.
        """
        return ActiveRun(self, run, on_done, facts)

    def close(self) -> None:
        """Stop the launcher process (it starts again with the next run)."""
        self.launcher.close()


def journal_dir_for(cache: Path, worker_name: str) -> Path:
    """Where a worker's runs keep their outage journals: one folder per worker name, so a successor finds them."""
    return Path(cache) / "journal" / "".join(c if c.isalnum() or c in "-_." else "_" for c in worker_name)


def script_environment(environ: dict | os._Environ, store: Store) -> dict[str, str]:
    """The environment every script gets: the worker's, plus the store and ``sooner`` on PYTHONPATH."""
    env = dict(environ)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if SOONER_PACKAGE_PARENT not in paths:
        paths.insert(0, SOONER_PACKAGE_PARENT)
    env["PYTHONPATH"] = os.pathsep.join(paths)
    # `#!/usr/bin/env python3` in a job should find the worker's own Python
    # (with sooner.api and its dependencies), not a bare system interpreter.
    interpreter_dir = os.path.dirname(sys.executable)
    if interpreter_dir and env.get("PATH", "").split(os.pathsep)[0] != interpreter_dir:
        env["PATH"] = os.pathsep.join([interpreter_dir, env.get("PATH", os.defpath)])
    env["SOONER_MONGO_URL"] = store.url
    env["SOONER_DATABASE"] = store.database_name
    return env


class ActiveRun:
    """One run on its own thread. ``cancel()`` may be called from any thread."""

    def __init__(self, runner: Runner, run: Run, on_done: Callable[[ActiveRun], None] | None,
                 facts: JobFacts | None = None) -> None:
        self.runner = runner
        self.store = runner.store
        self.service = runner.service
        self.settings = runner.settings
        self.run = run
        self.id: str = run.id
        self.on_done = on_done
        self.done = threading.Event()
        self.status: RunStatus | None = None
        self.pid: int | None = None
        self.started_at: datetime | None = None
        self.facts: JobFacts | None = facts  # given by the claim, or read once the script has started
        self.supervised: Supervised | None = None
        self._start: dict[str, Any] | None = None  # the start record while it is not stored (START_RECORD_S)
        self._start_due = 0.0
        # Monotonic time this worker's lease on the run ends unless renewed (None: not fenced, see renewed()).
        self.lease_deadline: float | None = None
        self.thread = threading.Thread(target=self._main, name=f"sooner-run-{self.id[-6:]}", daemon=True)
        self._stop_request: tuple[RunStatus, str] | None = None
        self._wake_r, self._wake_w = os.pipe()
        self._wake_lock = threading.Lock()
        self._wake_closed = False
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.link = runner.link
        self.journal = RunJournal(runner.journal_dir, self.id, max_bytes=self.settings.outage_journal_mb * MB)
        # The script's tree as the loop samples it: peak memory and CPU for the end, samples for the heartbeat.
        self.usage = TreeUsage(self.id, runner.clock.now, self.settings.sample_s)
        self.output = OutputWriter(self.store, self.id, flush_s=self.settings.output_flush_ms / 1000,
                                   clock=runner.clock.now, journal=self.journal, link=self.link)
        self.calls = CallHandler(self.service, run, on_pending=self.wake, journal=self.journal, link=self.link)
        self._store_back = threading.Event()
        self._abandoned = threading.Event()
        self._outage_noted = False
        self._forget_link = self.link.on_up(self._link_up)

    # -- control from other threads ---------------------------------------
    def start(self) -> None:
        self.thread.start()

    def cancel(self, note: str, status: RunStatus = RunStatus.CANCELLED) -> None:
        """Ask the run to stop: SIGTERM now, SIGKILL after cancel_grace_s; it ends with ``status``."""
        if self._stop_request is None:
            self._stop_request = (status, note)
            self.wake()

    def renewed(self, at: float) -> None:
        """The worker renewed (or took) the run's lease at monotonic ``at``: the script may run ``fence_s`` more.

        ``fence_s`` is the lease, or the outage grace when longer: a worker that cannot reach
        the database keeps its scripts going that long. Past it the script is stopped as if
        cancelled, so a worker cut off from the database has killed its copy by the time a
        retry may start (the lease's expiry plus ``outlives_lease_s`` and the cancel grace).
        """
        first = self.lease_deadline is None
        self.lease_deadline = at + self.settings.fence_s
        if first:
            self.wake()  # later renewals only move the deadline on

    def abandon(self) -> None:
        """Stop waiting for the database to record the run's end (the worker is stopping); the journal stays."""
        self._abandoned.set()
        self._store_back.set()

    def _link_up(self) -> None:
        self._store_back.set()
        self.wake()

    def wake(self) -> None:
        # Under the lock: once the run has ended its descriptor numbers may belong to another file.
        with self._wake_lock:
            if self._wake_closed:
                return
            try:
                os.write(self._wake_w, b"x")
            except BlockingIOError:
                pass  # the pipe is full: a wake-up is pending anyway

    # -- for the code that executes the run (the script follower, HttpRun) --
    @property
    def stop_request(self) -> tuple[RunStatus, str] | None:
        """How the run was asked to end (cancel, the memory limit …), or None."""
        return self._stop_request

    def wait_for_wake(self, timeout_s: float) -> None:
        """Block up to ``timeout_s`` or until :meth:`wake` (a cancel, a lease, the database back)."""
        readable([self._wake_r], max(0.0, timeout_s))  # poll: the pipe may be descriptor 1024 or more
        _drain(self._wake_r)

    def record_end(self, status: RunStatus, *, note: str | None = None, started_at: datetime | None = None,
                   process_gone: bool = False) -> None:
        """End the run through the service, or through its journal while the database is unreachable."""
        self._record_end(status, note=note, started_at=started_at, process_gone=process_gone)

    # -- the run's thread --------------------------------------------------
    def _main(self) -> None:
        try:
            self._execute()
        except Exception as exc:
            logger.exception("run %s: worker error", self.id)
            self._fail_safely(f"worker error: {type(exc).__name__}: {exc}")
        finally:
            self.output.release()
            self._forget_link()
            self.journal.close(remove=True)  # kept if it still holds records: the next worker start replays them
            with self._wake_lock:
                self._wake_closed = True
                os.close(self._wake_r)
                os.close(self._wake_w)
            self.done.set()
            if self.on_done is not None:
                self.on_done(self)

    def _execute(self) -> None:
        run = self.run
        try:
            tree = self.runner.trees.path_for(run.commit, run.job)
            script = _script_path(tree, run.job)
        except SoonerError as exc:
            self._end_without_process(str(exc))
            return
        if JobKind.of(run.job) is JobKind.HTTP:  # its steps run here, in the worker (no process)
            from sooner.worker.http_runner import HttpRun  # with requests: only in workers that run HTTP jobs

            HttpRun(self, script, sleep=self.runner.http_sleep).execute()
            return
        with RpcServer(self.calls, self.runner.socket_dir, accept_thread=False) as rpc:
            try:
                supervised = self._spawn(script, tree, rpc.path or "")
            except FileNotFoundError:
                reason = ("the interpreter on its #! line was not found" if script.exists() else
                          f"it is not in the deployed tree (commit {(run.commit or '')[:8]})")
                self._end_without_process(f"could not start {run.job}: {reason}")
                return
            except OSError as exc:
                self._end_without_process(f"could not start {run.job}: {exc.strerror or exc}")
                return
            started = time.monotonic()
            self.supervised, self.pid = supervised, supervised.script_pid
            try:
                self.started_at = self.runner.clock.now()
                PROCESS.dispatch_latency.observe(run.waited_s(self.started_at))
                self._start = self.store.runs.start_fields(
                    pid=supervised.script_pid, commit=run.commit, now=self.started_at, host=self.runner.host,
                    pgid=supervised.script_pid, supervisor_pid=supervised.supervisor_pid,
                    supervisor_started_at=supervised.supervisor_started_at)
                self._start_due = started + self.runner.start_record_s
                commit = (run.commit or "")[:8]
                self.output.system(f"sooner: run {self.id} of {run.job} on worker {self.runner.worker_name} "
                                   f"(commit {commit})")
                # The job and the jobs hooked to its end in one read, reused by the end (sooner.runs.facts);
                # read once the script runs, so the read does not delay its start.
                if self.facts is None or not self.facts.reusable():
                    self.facts = JobFacts.read(self.store, run.job)
                job = self.facts.job
                memory_limit_mb = job.memory_limit_mb if job is not None else None
            except BaseException:  # the follower did not take the run over: leave nothing running or held
                supervised.kill()
                supervised.close()
                raise
            returncode, forced = _Follower(self, supervised, started, memory_limit_mb, rpc).follow()
        self._finish(returncode, forced, time.monotonic() - started)

    def _spawn(self, script: Path, tree: Path, socket_path: str) -> Supervised:
        run = self.run
        env = dict(self.runner.base_env)
        env.update({"SOONER_SOCKET": socket_path, "SOONER_RUN_ID": self.id, "SOONER_JOB": run.job,
                    "SOONER_DATA": json.dumps(run.data, default=str),
                    "SOONER_WORKER": self.runner.worker_name})
        return self.runner.launcher.start([str(script), socket_path], cwd=str(tree), env=env)

    def _finish(self, returncode: int, forced: tuple[RunStatus, str] | None, elapsed: float) -> None:
        self.calls.flush_progress(force=True)
        note = None
        if returncode < 0:
            name = _signal_name(-returncode)
            self.output.system(f"sooner: killed by {name} after {elapsed:.1f}s")
            note = f"killed by {name}"
        else:
            self.output.system(f"sooner: exited with code {returncode} after {elapsed:.1f}s")
        if forced is not None:
            status, note = forced
        else:
            status = RunStatus.SUCCEEDED if returncode == 0 else RunStatus.FAILED
        self.output.flush()
        self.status = status
        self.usage.close()
        reported = self.supervised.reported_usage if self.supervised is not None else None
        # A lost run's retry need not wait for this copy: it is gone.
        self._record_end(status, exit_code=returncode, note=note, started_at=self.started_at,
                         usage=self.usage.result(reported),
                         process_gone=status is RunStatus.LOST)

    @property
    def start_due(self) -> float | None:
        """When (monotonic) the start record is due to be stored on its own; None: stored, or the database is away."""
        return None if self._start is None or self.link.down else self._start_due

    def record_start_if_due(self, now: float) -> None:
        """Store the start record once it is due (the script still runs); an outage leaves it for the end."""
        due, start = self.start_due, self._start
        if due is None or now < due or start is None:  # start: None whenever due is (for the type checker)
            return
        if "pid_started_at" not in start and self.supervised is not None:
            # Read now, not at the spawn: a script that ends first needs none (no process is left to verify).
            if (created := self.supervised.script_started_at()) is not None:
                start["pid_started_at"] = created
        try:
            self.store.runs.record_started(self.id, start)
        except StoreUnreachable as exc:
            self.link.failed(exc)  # kept: stored when the link is back, or with the end (or its journal)
            return
        self._start = None

    def _end_without_process(self, reason: str) -> None:
        self.output.system(f"sooner: {reason}")
        self.output.flush()
        self.status = RunStatus.FAILED
        self._record_end(RunStatus.FAILED, note=reason)

    # -- the outage journal ------------------------------------------------
    def _record_end(self, status: RunStatus, *, exit_code: int | None = None, note: str | None = None,
                    started_at: datetime | None = None, process_gone: bool = False,
                    usage: RunUsage | None = None) -> None:
        """End the run through the service; while the database is unreachable, journal the end and wait for it.

        The run keeps its slot (and its lease, which the worker's heartbeat renews once the
        database is back) until its end is stored, so it is never marked lost and retried for
        an outage it lived through.
        """
        PROCESS.runs_finished.labels(self.run.job, status.value).inc()
        start, self._start = self._start, None  # not stored yet: it goes with the end
        if not self.journal.active and not self.link.down:
            try:
                if process_gone:
                    self.store.runs.mark_process_gone(self.id)
                self.service.finish(self.id, status, exit_code=exit_code, note=note, started_at=started_at,
                                    facts=self.facts, usage=usage, start=start)
                return
            except StoreUnreachable as exc:
                self.link.failed(exc)
        self.journal.end(status, exit_code=exit_code, note=note, started_at=started_at, process_gone=process_gone,
                         usage=usage, start=start)
        self._replay_until_stored()

    def _replay_until_stored(self) -> None:
        while not self._abandoned.is_set():
            if not self.link.down:
                try:
                    if self.journal.replay(self.service, limit=None):
                        return
                except StoreUnreachable as exc:
                    self.link.failed(exc)
            self._store_back.wait(PROBE_S)  # woken when the link is back; the timeout only re-checks
            self._store_back.clear()
        logger.warning("run %s: the worker stopped before the database came back; its journal %s is replayed by "
                       "the next worker of this name on this host", self.id, self.journal.path)

    def keep_journal(self) -> None:
        """Called by the run's loop: note an outage in the output, and replay the journal once the database is back."""
        journal = self.journal
        if not journal.active:
            return
        if not self._outage_noted:
            self._outage_noted = True
            self.output.system("sooner: the database is unreachable; the run goes on, and its output is kept in "
                               "the worker's journal until the database is back")
        if self.link.down:
            return
        try:
            if journal.replay(self.service):
                self._outage_noted = False
                self.output.system("sooner: the database is back; the journaled output is stored")
        except StoreUnreachable as exc:
            self.link.failed(exc)

    @property
    def replay_pending(self) -> bool:
        """The journal holds records and the database answers: the run's loop should replay now."""
        return self.journal.active and not self.link.down

    def _fail_safely(self, reason: str) -> None:
        if self.supervised is not None:
            self.supervised.kill()
        try:
            self.output.system(f"sooner: {reason}")
            self.output.flush()
        except Exception:
            logger.warning("run %s: could not write its last output", self.id, exc_info=True)
        try:
            self.status = RunStatus.FAILED
            self._record_end(RunStatus.FAILED, note=reason)
        except Exception:
            logger.exception("run %s: could not record its end; its lease will expire", self.id)


class _Follower:
    """The select loop of one supervised script: output, calls, exit, cancel, timeout, memory, lease."""

    def __init__(self, active: ActiveRun, supervised: Supervised, started: float,
                 memory_limit_mb: int | None, rpc: RpcServer | None = None) -> None:
        self.active = active
        self.supervised = supervised
        self.rpc = rpc  # its connections are accepted here, in the loop
        self.decoder = StreamDecoder(active.output, active.calls)
        timeout_s = active.run.timeout_s
        self.timeout_at = started + float(timeout_s) if timeout_s else None
        self.timeout_s = timeout_s
        self.memory_limit_mb = memory_limit_mb
        # Sampling keeps a snapshot of the tree, needed for kills only without a subreaper.
        # Every run is sampled (monitoring: peak memory, CPU), every SAMPLE_S where the memory limit or a
        # tree without a subreaper needs it (the first at once), else every MONITOR_S (most runs end sooner).
        self.sample_every = SAMPLE_S if memory_limit_mb or not supervised.subreaper else MONITOR_S
        self.next_sample = started if self.sample_every == SAMPLE_S else started + MONITOR_S
        self.forced: tuple[RunStatus, str] | None = None
        self.kill_at: float | None = None
        self.killed = False
        self.leftovers_killed = False
        self.linger_until: float | None = None
        self.paused = False  # the outage journal is full: output is not read

    @property
    def returncode(self) -> int | None:
        return self.supervised.returncode

    @property
    def supervisor_done(self) -> bool:
        """The supervisor exited (its status pipe is closed): nothing of the tree is left under it."""
        return self.supervised.status_closed

    def follow(self) -> tuple[int, tuple[RunStatus, str] | None]:
        """Run until the script's tree is gone and its pipes are drained; returns (returncode, forced status)."""
        selector = selectors.DefaultSelector()
        streams = {self.supervised.stdout: self.decoder.stdout, self.supervised.stderr: self.decoder.stderr}
        for fd, feed in streams.items():
            selector.register(fd, selectors.EVENT_READ, feed)
        selector.register(self.active._wake_r, selectors.EVENT_READ, None)
        selector.register(self.supervised.status_fd, selectors.EVENT_READ, "status")
        if self.rpc is not None:
            selector.register(self.rpc.fileno(), selectors.EVENT_READ, "rpc")
        if self.returncode is not None:  # a quick script: its end came with the supervisor's first report
            self.linger_until = time.monotonic() + LINGER_S
        try:
            self._loop(selector, streams)
        finally:
            selector.close()
            if self.rpc is not None:
                self.rpc.accept_pending()  # calls of a script that connected just before it ended
            if not self.supervisor_done:  # an error in the loop: leave nothing running
                self.supervised.kill()
            self.supervised.close()
        self.decoder.close()
        assert self.returncode is not None
        return self.returncode, self.forced

    def _loop(self, selector: selectors.BaseSelector, streams: dict) -> None:
        output, calls = self.active.output, self.active.calls
        arrival = ArrivalOrder(streams)  # the selector's order is not the order the pipes became readable in
        try:
            while streams or not self.supervisor_done:
                self._pause_while_journal_full(selector, streams)
                ready = []
                for key, _ in selector.select(self._timeout()):
                    if key.data == "status":
                        self._read_status(selector)
                    elif key.data == "rpc" and self.rpc is not None:
                        self.rpc.accept_ready()
                    elif key.data is None:
                        _drain(key.fd)
                    else:
                        ready.append(key.fd)
                for fd in arrival.order(ready, () if self.paused else streams):
                    data = os.read(fd, READ_BYTES)
                    arrival.read(fd, drained=len(data) < READ_BYTES)
                    if data:
                        streams[fd](data)
                    else:
                        arrival.forget(fd)
                        selector.unregister(fd)
                        del streams[fd]
                now = time.monotonic()
                self._control(now)
                self.active.record_start_if_due(now)
                if self.linger_until is not None and now >= self.linger_until:
                    if not self._leftovers(selector, streams):
                        break
                due = output.due()
                if due is not None and now >= due:
                    output.flush()
                due = calls.progress_due()
                if due is not None and now >= due:
                    calls.flush_progress()
                self.active.keep_journal()
        finally:
            arrival.close()

    def _pause_while_journal_full(self, selector: selectors.BaseSelector, streams: dict) -> None:
        """Stop reading the script's output while its outage journal is full: it waits on its pipe, nothing drops."""
        full = self.active.journal.full
        if full == self.paused:
            return
        self.paused = full
        for fd, feed in streams.items():
            if full:
                selector.unregister(fd)
            else:
                selector.register(fd, selectors.EVENT_READ, feed)
        if full:
            self.active.output.system("sooner: the outage journal is full; output waits until the database is back")

    def _timeout(self) -> float | None:
        running = self.returncode is None
        if self.active.replay_pending:
            return 0.0
        deadlines = [d for d in (self.active.output.due(), self.active.calls.progress_due(),
                                 self.timeout_at if self.forced is None and running else None,
                                 self.active.lease_deadline if self.forced is None and running else None,
                                 self.kill_at if not self.killed and running else None,
                                 self.next_sample if running else None,
                                 self.active.start_due if running else None,
                                 self.linger_until) if d is not None]
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - time.monotonic())

    def _read_status(self, selector: selectors.BaseSelector) -> None:
        self.supervised.read_status()
        if self.supervised.status_closed:
            selector.unregister(self.supervised.status_fd)
        if self.returncode is not None and self.linger_until is None:
            self.linger_until = time.monotonic() + LINGER_S

    def _control(self, now: float) -> None:
        if self.returncode is not None:
            return
        request = self.active._stop_request
        lease_deadline = self.active.lease_deadline
        if self.forced is None and request is not None:
            self._terminate(request)
        elif self.forced is None and self.timeout_at is not None and now >= self.timeout_at:
            self._terminate((RunStatus.TIMED_OUT, f"timed out after {self.timeout_s:g}s"))
        elif self.forced is None and lease_deadline is not None and now >= lease_deadline:
            self._terminate((RunStatus.LOST, f"lost: worker {self.active.runner.worker_name} could not renew its "
                                             f"lease for {self.active.settings.fence_s:g}s (the database did not "
                                             f"answer); stopped the script"))
        elif self.kill_at is not None and not self.killed and now >= self.kill_at:
            self.killed = True
            grace = self.active.settings.cancel_grace_s
            self.active.output.system(f"sooner: still running {grace:g}s after SIGTERM; sending SIGKILL")
            self.supervised.kill()
        if self.next_sample is not None and now >= self.next_sample:
            self.next_sample = now + self.sample_every
            self._check_memory(self.supervised.sample(self.active.usage))

    def _check_memory(self, rss: int) -> None:
        limit = self.memory_limit_mb
        if limit and self.forced is None and rss > limit * MB:
            self._terminate((RunStatus.FAILED, f"killed: memory {rss // MB} MB over the job's limit of {limit} MB"))

    def _terminate(self, request: tuple[RunStatus, str]) -> None:
        self.forced = request
        grace = self.active.settings.cancel_grace_s
        self.active.output.system(f"sooner: {request[1]}; sending SIGTERM (SIGKILL in {grace:g}s)")
        self.supervised.signal(signal.SIGTERM)
        self.kill_at = time.monotonic() + grace

    def _leftovers(self, selector: selectors.BaseSelector, streams: dict) -> bool:
        """The script exited but its tree or pipes live on: kill the tree once, then stop waiting."""
        if not streams and self.supervisor_done:
            self.linger_until = None
            return True
        if not self.leftovers_killed:
            self.leftovers_killed = True
            if streams:
                self.active.output.system("sooner: the script exited but processes it started still hold its "
                                          "output open; killing them")
            else:
                count = len(self.supervised.tree())
                self.active.output.system(f"sooner: the script exited but left {count} process"
                                          f"{'es' if count != 1 else ''} running; "
                                          f"killing {'them' if count != 1 else 'it'}")
            self.supervised.kill()
            self.linger_until = time.monotonic() + LINGER_S
            return True
        if streams:
            self.active.output.system("sooner: stopped reading output held open by processes outside the run")
            for fd in list(streams):
                if not self.paused:
                    selector.unregister(fd)
                del streams[fd]
        if not self.supervisor_done:
            self.supervised.kill_supervisor()
            selector.unregister(self.supervised.status_fd)
            self.supervised.status_closed = True
        return False


def _script_path(tree: Path, job: str) -> Path:
    # Checked by name, without touching the disk: symlinks inside the tree were
    # vetted at deploy, and a missing file is reported when the start fails.
    parts = job.split("/")
    if job.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise RunError(f"job path {job!r} is not a plain path inside the deployed tree")
    return tree.joinpath(*parts)


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except (BlockingIOError, OSError):
        pass


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
