"""Runtime commands: ``scheduler``, ``run``, ``runs``, ``logs``, ``emit``, ``queue …`` and ``workers``.

``sooner run NAME --follow`` exits with the script's exit code, so it can
stand in for running the script by hand:

* succeeded → 0; failed → the script's exit code (128+N when signal N killed
  it, 1 when unknown);
* timed_out → 124 (as GNU ``timeout``), cancelled → 130 (as Ctrl-C),
  lost (its worker vanished) → 75 (``EX_TEMPFAIL``: try again).
"""

from __future__ import annotations

import getpass
import json
import os
import shlex
import signal
import sys
import threading
import time
from datetime import datetime
from typing import Any, Callable

import click

from sooner.cli import AppContext, main, pass_app
from sooner.cli.output import ago, duration, echo_table
from sooner.errors import SoonerError, StoreUnreachable
from sooner.model import ManualTrigger, Progress, Run, RunStatus
from sooner.model.data import check_data, check_run_data, load_json
from sooner.model.waiting import WaitCode, explained, wait_reasons
from sooner.model import failed as failed_view

FOLLOW_POLL_S = 0.05
# How often --follow asks why a run that has not started waits (a few queries each time).
WAIT_CHECK_S = 1.0
STATUS_EXIT_CODES = {RunStatus.SUCCEEDED: 0, RunStatus.TIMED_OUT: 124, RunStatus.CANCELLED: 130, RunStatus.LOST: 75}
PROGRESS_LINE_EVERY_S = 1.0  # without a TTY, progress lines at most this often


def parse_json(text: str | None, what: str, check: Callable[[Any, str], Any] = check_run_data) -> Any:
    """Parse a JSON option or argument and check it is data Sooner can store (:mod:`sooner.model.data`).

    :class:`~sooner.model.data.InvalidData` names the option and the problem.
    """
    if text is None:
        return None
    return check(load_json(text, what), what)


def current_user() -> str:
    try:
        return os.environ.get("USER") or getpass.getuser()
    except Exception:  # noqa: BLE001 - no passwd entry (containers); an author is cosmetic
        return "unknown"


# -- scheduler ---------------------------------------------------------------
@main.command("scheduler")
@click.option("--once", is_flag=True,
              help="Tick once (fire due runs, expire lost ones, send due notifications) and exit.")
@pass_app
def scheduler_command(app: AppContext, once: bool) -> None:
    """Fire cron schedules, end runs whose worker vanished and send notifications, until SIGTERM/SIGINT.

    Any number of schedulers may run against one database: each tick fires at
    most once. Schedule and enable changes take effect within a second.
    """
    from sooner.scheduling.scheduler import Scheduler

    scheduler = Scheduler(app.store, app.settings, service=app.runs)
    if once:
        from sooner.runs.notifier import Notifier

        for run in scheduler.tick():
            click.echo(f"fired {run.job} ({run.trigger.describe()}): run {run.ref} ({run.id})")
        for entry in Notifier(app.store, app.settings).step():  # the outbox too, once
            click.echo(f"notification {entry.describe()}")
        return
    stop = threading.Event()

    def request_stop(signum: int, frame: object) -> None:
        stop.set()
    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    click.echo(f"sooner scheduler ready (pid {os.getpid()}, database {app.store.database_name}); "
               f"SIGTERM or Ctrl-C stops it")
    sys.stdout.flush()
    from sooner.runs.notifier import start_notifier

    stop_notifier = start_notifier(app.store, app.settings)  # sends the notification outbox, in this process
    try:
        scheduler.run_forever(stop)
    finally:
        stop_notifier()
    click.echo("sooner scheduler stopped")


# -- run / runs / logs ------------------------------------------------------
@main.command("run")
@click.argument("name")
@click.option("--data", "data_text", metavar="JSON", help="Data for the run (the script reads $SOONER_DATA).")
@click.option("-f", "--follow", is_flag=True,
              help="Stream the output live and exit with the script's exit code (124 timed out, "
                   "130 cancelled, 75 lost).")
@click.option("--worker", help="Run on this worker name or tag (default: the job's setting).")
@click.option("--dedupe-key", metavar="KEY",
              help="Within the job's dedupe window (`sooner job set --dedupe-window`), a request with the same "
                   "key gets the run already queued instead of a new one.")
@pass_app
def run_command(app: AppContext, name: str, data_text: str | None, follow: bool, worker: str | None,
                dedupe_key: str | None) -> None:
    """Queue a run of job NAME now (even a disabled one); print its id (stderr names it as JOB#N too)."""
    from sooner.model.dedupe import validate_dedupe_key
    from sooner.model.job_settings import validate_worker_name

    if worker is not None:  # '' or 'a b' would make a run that no worker ever claims
        validate_worker_name(worker, "--worker", "worker name or tag")
    if dedupe_key is not None:
        validate_dedupe_key(dedupe_key, "--dedupe-key")
    data = parse_json(data_text, "--data")
    job = app.store.jobs.get(name)
    run = app.runs.queue(job, ManualTrigger(author=current_user()), data=data, target=worker, dedupe_key=dedupe_key)
    assert run is not None  # manual runs have no tick and no overlap check
    if run.deduplicated:
        _system(f"already queued as run {run.ref} ({run.status.value}, id {run.id}; the same --dedupe-key within the "
                f"job's {job.dedupe_window_s:g}s dedupe window)")
    else:
        if dedupe_key is not None and not job.dedupe_window_s:
            click.secho(f"sooner: warning: --dedupe-key has no effect: job {name} has no dedupe window "
                        f"(`sooner job set {name} --dedupe-window SECONDS`)", fg="yellow", err=True)
        warn_if_no_worker(app, worker or job.worker)
    if not follow:
        if not run.deduplicated:
            _system(f"queued run {run.ref}")
        click.echo(run.id)
        return
    if not run.deduplicated:
        _system(f"queued run {run.ref} ({run.id})")
    final = _follow(app.store, run.id, app.settings.heartbeat_s)
    sys.exit(exit_code_for(final))


def exit_code_for(run: Run) -> int:
    """The exit code ``run --follow`` ends with (see the module docstring)."""
    if run.status is RunStatus.FAILED:
        code = run.exit_code
        if isinstance(code, int) and code < 0:
            return 128 - code
        return code if isinstance(code, int) and 0 < code < 256 else 1
    return STATUS_EXIT_CODES.get(run.status, 1)


def warn_if_no_worker(app: AppContext, target: str | None) -> None:
    """Warn on stderr when no online worker serves ``target`` (a :mod:`sooner.model.target` value; None = any)."""
    warning = app.runs.target_warning(target)
    if warning:
        click.secho(f"sooner: warning: {warning}", fg="yellow", err=True)


@main.command("runs")
@click.option("--job", help="Only runs of this job.")
@click.option("--status", type=click.Choice(RunStatus.values()), help="Only runs in this state.")
@click.option("-n", "--limit", type=click.IntRange(1, 10000), default=20, show_default=True)
@click.option("--failed", is_flag=True, help="The Failed view: runs that failed, timed out or were lost and got "
                                             "no further attempt (not dismissed).")
@click.option("--poison", is_flag=True, help="The poison list: HTTP job runs whose steps failed every attempt.")
@click.option("--worker", help="With --failed: only runs of this worker.")
@click.option("--search", metavar="TEXT", help="With --failed: only runs whose error or job contains TEXT.")
@click.option("--sort", type=click.Choice(failed_view.SORTS), default="time", show_default=True,
              help="With --failed: newest first, or by job or worker.")
@click.option("--group-by", type=click.Choice(failed_view.GROUPS), help="With --failed: count runs per group.")
@pass_app
def runs_command(app: AppContext, job: str | None, status: str | None, limit: int, failed: bool, poison: bool,
                 worker: str | None, search: str | None, sort: str, group_by: str | None) -> None:
    """List runs, newest first; with --failed, the Failed view (`sooner retry` / `sooner dismiss` act on it)."""
    from sooner.cli.failed import attempt_label, jobs_of, show_failed

    if poison:
        from sooner.cli.poison import show_poison

        if status or failed:
            raise click.UsageError("--poison lists poison runs: leave out --status and --failed")
        show_poison(app, job=job, limit=limit)
        return
    if failed:
        if status:
            raise click.UsageError("--failed lists failed, timed-out and lost runs: leave out --status")
        show_failed(app, job=job, worker=worker, search=search, sort=sort, group_by=group_by, limit=limit)
        return
    if worker or search or group_by or sort != "time":
        raise click.UsageError("--worker, --search, --sort and --group-by go with --failed")
    now = app.store.clock.now()
    runs = app.store.runs.list(job=job, status=status, limit=limit)
    jobs = jobs_of(app, [run for run in runs if run.attempt > 1])
    waits = wait_reasons(app.store.reads, runs, now, app.settings.heartbeat_s)
    rows = [[run.ref, run.status.value, run.worker,
             run.trigger.describe() + (f" · attempt {attempt_label(run, jobs)}" if run.attempt > 1 else ""),
             ago(run.started_at, now) if run.started_at else None, _duration(run, now), _progress(run.progress),
             waits[run.id].short() if run.id in waits else None, run.id]
            for run in runs]
    echo_table(["run", "status", "worker", "trigger", "started", "duration", "progress", "eta", "id"], rows,
               "no runs yet" if not (job or status) else "no runs match")


@main.command("logs")
@click.argument("run_id", metavar="RUN")
@click.option("-f", "--follow", is_flag=True, help="Keep streaming until the run ends.")
@pass_app
def logs_command(app: AppContext, run_id: str, follow: bool) -> None:
    """Print a run's output, then the events it emitted and the runs they started.

    RUN is JOB#N (or JOB:N), the run's id, or 6+ characters from the start or end of its id.
    """
    store = app.store
    run = store.runs.get(run_id)
    if follow:
        _follow(store, run.id, app.settings.heartbeat_s)
        return
    from sooner.cli.failed import chain_line

    chain = chain_line(app, run)
    if chain:
        _system(chain)
    if store.reads.output_removed(run, store.clock.now()):
        days = store.output.policy.retention_days
        _system(f"output older than {days:g} days was removed (retention)")
    after = -1
    while True:  # page by seq, so a huge log is never held in memory whole
        page = store.reads.output_after(run.id, after)
        _print_chunks(page.chunks)
        if not page.more or not page.chunks:
            break
        after = page.next_after
    if run.finished:
        _system(_ending(run))
    _print_emitted(store, run)
    notified = [entry.describe() for entry in store.notifications.for_run(run.id)]
    if notified:
        _system("notified: " + "; ".join(notified))


def _print_emitted(store: Any, run: Run) -> None:
    """``sooner: emitted NAME → started JOB#N (status), …`` per event the run emitted (the first page)."""
    emitted = store.reads.emitted_events(run.id)
    for event in emitted.events:
        started = [emitted.runs.get(run_id) for run_id in event.get("runs") or []]
        shown = ", ".join(f"{r.ref} ({r.status.value})" if r else run_id
                          for r, run_id in zip(started, event.get("runs") or []))
        outcome = f" → started {shown}" if shown else f" → {event['note']}" if event.get("note") else ""
        _system(f"emitted {event.get('name')}{outcome}")
    if emitted.more:
        _system(f"more events follow: the run's page or GET /api/runs/{run.id}/events?offset={emitted.next_offset}")


class WaitNotes:
    """What ``--follow`` says while the run has not started: ``waiting: …`` each time the reason changes.

    Asked at most every ``every_s``; ``starting`` (a worker takes it within a poll) is not worth a line,
    and a retry's countdown is one line, not one per second.
    """

    def __init__(self, heartbeat_s: float, every_s: float = WAIT_CHECK_S, clock: Callable[[], float] = time.monotonic):
        self.heartbeat_s = heartbeat_s
        self.every_s = every_s
        self.clock = clock
        self.checked = float("-inf")
        self.shown: tuple[object, ...] | None = None

    def check(self, store: Any, run: Run) -> str | None:
        """The line to print now, if any."""
        if not explained(run) or self.clock() - self.checked < self.every_s:
            return None
        self.checked = self.clock()
        reason = wait_reasons(store.reads, [run], store.clock.now(), self.heartbeat_s).get(run.id)
        if reason is None or reason.code is WaitCode.STARTING:
            return None
        key = (reason.code,) if reason.code is WaitCode.RETRY_WAIT else (reason.code, reason.message)
        if key == self.shown:
            return None
        self.shown = key
        return f"waiting: {reason.line()}"


def _follow(store: Any, run_id: str, heartbeat_s: float) -> Run:
    """Stream a run's output and progress until it ends (saying why while it waits); returns the finished run."""
    progress = ProgressDisplay(sys.stderr.isatty())
    waits = WaitNotes(heartbeat_s)
    after, status, unreachable, shown = -1, None, False, run_id
    try:
        while True:
            try:
                run = store.runs.get(run_id)
                shown = run.ref
                if _started_since(status, run):
                    progress.clear()
                    _system(f"started on {run.worker}")  # before its output, which the worker writes after
                status = run.status
                if (note := waits.check(store, run)) is not None:
                    progress.clear()
                    _system(note)
                chunks = store.output.read(run_id, after_seq=after)
            except StoreUnreachable as exc:  # wait for it: the run goes on, and its worker keeps the output
                if not unreachable:
                    progress.clear()
                    _system(f"{exc}; waiting for it (Ctrl-C stops following; the run goes on)")
                unreachable = True
                time.sleep(FOLLOW_POLL_S)
                continue
            if unreachable:
                unreachable = False
                _system("the database is back; following again")
            if chunks:
                progress.clear()
                _print_chunks(chunks)
                after = chunks[-1]["seq"]
            if run.finished:
                _print_chunks(store.output.read(run_id, after_seq=after))  # written just before the end
                progress.finish(run.progress)
                _system(_ending(run))
                return run
            progress.show(run.progress)
            time.sleep(FOLLOW_POLL_S)
    except KeyboardInterrupt:
        progress.clear()
        click.echo(f"stopped following; run {shown} goes on (`sooner logs {shlex.quote(shown)} --follow`)", err=True)
        sys.exit(130)


def _started_since(seen: RunStatus | None, run: Run) -> bool:
    """Whether a worker started ``run`` since the follower last saw it not yet started (a run that ran
    and ended between two polls was started too)."""
    waited = seen is not None and seen.active and seen is not RunStatus.RUNNING
    return waited and run.worker is not None and (run.status is RunStatus.RUNNING or run.finished)


def _print_chunks(chunks: list[dict]) -> None:
    for chunk in chunks:
        stream = chunk.get("stream")
        if stream == "system":  # the worker's own lines ("sooner: exited with code 3 …")
            click.secho(chunk["text"], nl=False, dim=True, err=True)
        else:
            click.echo(chunk["text"], nl=False, err=stream == "stderr")
    sys.stdout.flush()


def _system(text: str) -> None:
    click.secho(f"sooner: {text}", dim=True, err=True)


def _ending(run: Run) -> str:
    code = f" (exit code {run.exit_code})" if run.exit_code is not None else ""
    note = f": {run.note}" if run.note else ""
    took = f" after {duration(run.duration_s)}" if run.duration_s is not None else ""
    return f"run {run.ref} {run.status.value}{code}{took}{note}"


class ProgressDisplay:
    """A run's progress on stderr: a redrawn bar on a TTY, else an occasional line."""

    def __init__(self, tty: bool, width: int = 30, clock: Callable[[], float] = time.monotonic) -> None:
        self.tty = tty
        self.width = width
        self.clock = clock
        self.shown: tuple[float, float] | None = None
        self.drawn = False
        self.last_line_at = float("-inf")

    def show(self, progress: Progress | None) -> None:
        value = _progress_value(progress)
        if value is None or value == self.shown:
            return
        if self.tty:
            current, maximum = value
            filled = int(self.width * min(1.0, current / maximum)) if maximum else 0
            sys.stderr.write(f"\r\x1b[2K[{'#' * filled}{'.' * (self.width - filled)}] {_progress(progress)}")
            sys.stderr.flush()
            self.drawn = True
        elif self.clock() - self.last_line_at >= PROGRESS_LINE_EVERY_S:
            _system(f"progress {_progress(progress)}")
            self.last_line_at = self.clock()
        else:
            return  # shown later, when the interval has passed
        self.shown = value

    def clear(self) -> None:
        """Erase the bar before other text is printed (it is redrawn on the next poll)."""
        if self.drawn:
            sys.stderr.write("\r\x1b[2K")
            sys.stderr.flush()
            self.drawn = False
            self.shown = None

    def finish(self, progress: Progress | None) -> None:
        self.clear()
        if not self.tty and _progress_value(progress) not in (None, self.shown):
            _system(f"progress {_progress(progress)}")


def _progress_value(progress: Progress | None) -> tuple[float, float] | None:
    return (progress.current, progress.max) if progress is not None else None


def _progress(progress: Progress | None) -> str | None:
    value = _progress_value(progress)
    if value is None:
        return None
    current, maximum = value
    if maximum == 100:
        return f"{current:g}%"
    percent = f" ({100 * current / maximum:.0f}%)" if maximum else ""
    return f"{current:g}/{maximum:g}{percent}"


def _duration(run: Run, now: datetime) -> str | None:
    seconds = run.duration(now)
    return duration(seconds) if seconds is not None and (run.finished_at or run.status is RunStatus.RUNNING) else None


# -- emit ----------------------------------------------------------------------
@main.command("emit")
@click.argument("event")
@click.option("--data", "data_text", metavar="JSON", help="The event's data (becomes the data of the runs).")
@pass_app
def emit_command(app: AppContext, event: str, data_text: str | None) -> None:
    """Emit EVENT: every enabled job hooked to it gets a run."""
    from sooner.model.job_settings import validate_event_name

    validate_event_name(event, "EVENT")
    data = parse_json(data_text, "--data")
    store = app.store
    emitted = app.runs.emit(event, data, source={"type": "cli", "author": current_user()})
    runs = [store.runs.get(run_id) for run_id in emitted.get("runs") or []]
    for run in runs:
        click.echo(f"started run {run.ref} ({run.id})")
    if emitted.get("note"):
        click.echo(emitted["note"])
    elif not runs:
        hooked = store.jobs.with_hook(event)
        click.echo(f"no job is hooked to {event}" if not hooked else
                   f"no run started: {', '.join(j.name for j in hooked)} still running (overlap=skip)")


# -- queue -----------------------------------------------------------------------
@main.group("queue")
def queue_group() -> None:
    """Read and change queue collections (the entries scripts keep their work in)."""


@queue_group.command("put")
@click.argument("name")
@click.argument("data_text", metavar="DATA_JSON")
@click.option("--status", default="pending", show_default=True)
@pass_app
def queue_put(app: AppContext, name: str, data_text: str, status: str) -> None:
    """Add an entry with DATA_JSON to queue NAME; print its id."""
    data = parse_json(data_text, "DATA_JSON", check_data)
    click.echo(str(app.store.queues(name).put(data, status=status)["_id"]))


@queue_group.command("list")
@click.argument("name")
@click.option("--status", help="Only entries with this status.")
@click.option("-n", "--limit", type=click.IntRange(0, 1000000), default=50, show_default=True,
              help="At most this many (0 = all).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line instead of a table.")
@pass_app
def queue_list(app: AppContext, name: str, status: str | None, limit: int, as_json: bool) -> None:
    """List entries of queue NAME, oldest first."""
    entries = app.store.queues(name).find(status=status, limit=limit)
    if as_json:
        for entry in entries:
            click.echo(entry_json(entry))
        return
    now = app.store.clock.now()
    rows = [[str(e["_id"]), e.get("status"), ago(e.get("createdAt"), now), ago(e.get("updatedAt"), now),
             _excerpt(json.dumps(e.get("data"), default=str))] for e in entries]
    echo_table(["id", "status", "created", "updated", "data"], rows, f"queue {name} has no entries"
               + (f" with status {status!r}" if status else ""))


@queue_group.command("claim")
@click.argument("name")
@click.option("--from", "status_from", default="pending", show_default=True, help="Take an entry with this status.")
@click.option("--to", "status_to", default="working", show_default=True, help="…and give it this status.")
@pass_app
def queue_claim(app: AppContext, name: str, status_from: str, status_to: str) -> None:
    """Atomically take the oldest entry of queue NAME; print it as JSON, exit 1 if there is none."""
    entry = app.store.queues(name).claim(status_from, status_to)
    if entry is None:
        click.echo(f"queue {name} has no {status_from!r} entry", err=True)
        sys.exit(1)
    click.echo(entry_json(entry))


@queue_group.command("update")
@click.argument("name")
@click.argument("entry_id", metavar="ID")
@click.option("--status", help="The new status.")
@click.option("--data", "data_text", metavar="JSON", help="Replace the entry's data.")
@pass_app
def queue_update(app: AppContext, name: str, entry_id: str, status: str | None, data_text: str | None) -> None:
    """Change the status and/or data of entry ID of queue NAME; print it as JSON."""
    data = parse_json(data_text, "--data", check_data)
    if status is None and data_text is None:
        raise click.UsageError("nothing to change: give --status and/or --data")
    entry = app.store.queues(name).update(entry_id, status=status, data=data)
    if entry is None:
        raise SoonerError(f"queue {name} has no entry {entry_id!r}")
    click.echo(entry_json(entry))


def entry_json(entry: dict) -> str:
    """A queue entry as one line of JSON (ids as strings, times as ISO 8601)."""
    def default(value: Any) -> Any:
        return value.isoformat() if isinstance(value, datetime) else str(value)
    return json.dumps({**entry, "_id": str(entry["_id"])}, default=default, ensure_ascii=False)


def _excerpt(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."


# -- workers ------------------------------------------------------------------------
@main.command("workers")
@pass_app
def workers_command(app: AppContext) -> None:
    """List workers: name, host, capacity, running runs, tags, heartbeat age, version."""
    now = app.store.clock.now()
    rows = []
    for worker in app.store.workers.list():
        beat = ago(worker.heartbeat_at, now)
        if worker.stopped_at:
            beat = f"stopped {ago(worker.stopped_at, now)}"
        elif not worker.online(now, app.settings.heartbeat_s):
            beat += " (stale)"
        rows.append([worker.name, worker.host, worker.capacity, len(worker.running), ",".join(worker.tags), beat,
                     worker.version])
    echo_table(["name", "host", "capacity", "running", "tags", "heartbeat", "version"], rows,
               "no workers have started yet: run `sooner worker -n NAME`")

