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
import signal
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import click

from sooner.cli import AppContext, main, pass_app
from sooner.cli.output import ago, duration, echo_table
from sooner.errors import SoonerError

FOLLOW_POLL_S = 0.05
STATUS_EXIT_CODES = {"succeeded": 0, "timed_out": 124, "cancelled": 130, "lost": 75}
PROGRESS_LINE_EVERY_S = 1.0  # without a TTY, progress lines at most this often


class InvalidData(SoonerError, ValueError):
    """A JSON option or argument given on the command line is not valid JSON."""

    def __init__(self, what: str, text: str, reason: str) -> None:
        shown = text if len(text) <= 60 else text[:57] + "..."
        super().__init__(f"{what} is not valid JSON ({reason}): {shown!r}")


def parse_json(text: str | None, what: str) -> Any:
    """Parse a JSON value from the command line; InvalidData names the option and the problem."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidData(what, text, f"{exc.msg} at column {exc.colno}") from None


def current_user() -> str:
    try:
        return os.environ.get("USER") or getpass.getuser()
    except Exception:  # noqa: BLE001 - no passwd entry (containers); an author is cosmetic
        return "unknown"


# -- scheduler ---------------------------------------------------------------
@main.command("scheduler")
@click.option("--once", is_flag=True, help="Tick once (fire due runs, expire lost ones) and exit.")
@pass_app
def scheduler_command(app: AppContext, once: bool) -> None:
    """Fire cron schedules and end runs whose worker vanished, until SIGTERM/SIGINT.

    Any number of schedulers may run against one database: each tick fires at
    most once. Schedule and enable changes take effect within a second.
    """
    from sooner.scheduler import Scheduler

    scheduler = Scheduler(app.store, app.settings)
    if once:
        for run in scheduler.tick():
            click.echo(f"fired {run['job']} for {_when(run['trigger']['scheduled_for'])}: run {run['_id']}")
        return
    stop = threading.Event()

    def request_stop(signum: int, frame: object) -> None:
        stop.set()
    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    click.echo(f"sooner scheduler ready (pid {os.getpid()}, database {app.store.db.name}); "
               f"SIGTERM or Ctrl-C stops it")
    sys.stdout.flush()
    scheduler.run_forever(stop)
    click.echo("sooner scheduler stopped")


# -- run / runs / logs ------------------------------------------------------
@main.command("run")
@click.argument("name")
@click.option("--data", "data_text", metavar="JSON", help="Data for the run (the script reads $SOONER_DATA).")
@click.option("-f", "--follow", is_flag=True,
              help="Stream the output live and exit with the script's exit code (124 timed out, "
                   "130 cancelled, 75 lost).")
@click.option("--worker", help="Run on this worker name or tag (default: the job's setting).")
@pass_app
def run_command(app: AppContext, name: str, data_text: str | None, follow: bool, worker: str | None) -> None:
    """Queue a run of job NAME now (even a disabled one); print its id."""
    from sooner.runs import queue_run

    data = parse_json(data_text, "--data")
    store = app.store
    job = store.jobs.get(name)
    run = queue_run(store, job, {"type": "manual", "author": current_user()}, data=data, target=worker)
    assert run is not None  # manual runs have no tick and no overlap check
    warn_if_no_worker(app, worker or job.get("worker"))
    if not follow:
        click.echo(run["_id"])
        return
    _system(f"run {run['_id']} of {name} queued")
    final = _follow(store, run["_id"])
    sys.exit(exit_code_for(final))


def exit_code_for(run: dict) -> int:
    """The exit code ``run --follow`` ends with (see the module docstring)."""
    status = run.get("status")
    if status == "failed":
        code = run.get("exit_code")
        if isinstance(code, int) and code < 0:
            return 128 - code
        return code if isinstance(code, int) and 0 < code < 256 else 1
    return STATUS_EXIT_CODES.get(status, 1) if isinstance(status, str) else 1


def warn_if_no_worker(app: AppContext, target: str | None) -> None:
    """Warn on stderr when no online worker matches ``target`` (a name or tag; None = any worker)."""
    workers = [w for w in app.store.workers.list() if _online(w, app.settings.heartbeat_s)]
    if target:
        workers = [w for w in workers if w["_id"] == target or target in (w.get("tags") or [])]
    if not workers:
        which = f"named or tagged {target!r} " if target else ""
        click.secho(f"sooner: warning: no worker {which}is online; the run waits until one starts "
                    f"(`sooner worker -n NAME`)", fg="yellow", err=True)


@main.command("runs")
@click.option("--job", help="Only runs of this job.")
@click.option("--status", type=click.Choice(["waiting", "queued", "running", "succeeded", "failed",
                                             "cancelled", "timed_out", "lost"]), help="Only runs in this state.")
@click.option("-n", "--limit", type=click.IntRange(1, 10000), default=20, show_default=True)
@pass_app
def runs_command(app: AppContext, job: str | None, status: str | None, limit: int) -> None:
    """List runs, newest first."""
    now = datetime.now(timezone.utc)
    rows = [[run["_id"], run["job"], run["status"], run.get("worker"), _trigger(run.get("trigger") or {}),
             ago(run.get("started_at"), now) if run.get("started_at") else None, _duration(run, now),
             _progress(run.get("progress"))]
            for run in app.store.runs.list(job=job, status=status, limit=limit)]
    echo_table(["id", "job", "status", "worker", "trigger", "started", "duration", "progress"], rows,
               "no runs yet" if not (job or status) else "no runs match")


@main.command("logs")
@click.argument("run_id", metavar="RUN")
@click.option("-f", "--follow", is_flag=True, help="Keep streaming until the run ends.")
@pass_app
def logs_command(app: AppContext, run_id: str, follow: bool) -> None:
    """Print a run's output (RUN is its id or a unique prefix of 6+ characters)."""
    store = app.store
    run = store.runs.get(run_id)
    if follow:
        _follow(store, run["_id"])
        return
    _print_chunks(store.output.read(run["_id"]))
    if run["status"] not in ("waiting", "queued", "running"):
        _system(_ending(run))


def _follow(store: Any, run_id: str) -> dict:
    """Stream a run's output and progress until it ends; returns the finished run."""
    progress = ProgressDisplay(sys.stderr.isatty())
    after, status = -1, None
    try:
        while True:
            run = store.runs.get(run_id)
            chunks = store.output.read(run_id, after_seq=after)
            if chunks:
                progress.clear()
                _print_chunks(chunks)
                after = chunks[-1]["seq"]
            if run["status"] != status and run["status"] == "running" and status is not None:
                progress.clear()
                _system(f"started on {run.get('worker')}")
            status = run["status"]
            if status not in ("waiting", "queued", "running"):
                _print_chunks(store.output.read(run_id, after_seq=after))  # written just before the end
                progress.finish(run.get("progress"))
                _system(_ending(run))
                return run
            progress.show(run.get("progress"))
            time.sleep(FOLLOW_POLL_S)
    except KeyboardInterrupt:
        progress.clear()
        click.echo(f"stopped following; run {run_id} goes on (`sooner logs {run_id} --follow`)", err=True)
        sys.exit(130)


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


def _ending(run: dict) -> str:
    code = f" (exit code {run['exit_code']})" if run.get("exit_code") is not None else ""
    note = f": {run['note']}" if run.get("note") else ""
    took = f" after {duration(run['duration_s'])}" if run.get("duration_s") is not None else ""
    return f"run {run['_id']} {run['status']}{code}{took}{note}"


class ProgressDisplay:
    """A run's progress on stderr: a redrawn bar on a TTY, else an occasional line."""

    def __init__(self, tty: bool, width: int = 30, clock: Callable[[], float] = time.monotonic) -> None:
        self.tty = tty
        self.width = width
        self.clock = clock
        self.shown: tuple[float, float] | None = None
        self.drawn = False
        self.last_line_at = float("-inf")

    def show(self, progress: dict | None) -> None:
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

    def finish(self, progress: dict | None) -> None:
        self.clear()
        if not self.tty and _progress_value(progress) not in (None, self.shown):
            _system(f"progress {_progress(progress)}")


def _progress_value(progress: dict | None) -> tuple[float, float] | None:
    if not progress or progress.get("current") is None:
        return None
    return float(progress["current"]), float(progress.get("max") or 0)


def _progress(progress: dict | None) -> str | None:
    value = _progress_value(progress)
    if value is None:
        return None
    current, maximum = value
    if maximum == 100:
        return f"{current:g}%"
    percent = f" ({100 * current / maximum:.0f}%)" if maximum else ""
    return f"{current:g}/{maximum:g}{percent}"


def _trigger(trigger: dict) -> str:
    kind = trigger.get("type", "?")
    if kind == "cron":
        extra = " catch-up" if trigger.get("catch_up") else ""
        return f"cron {_when(trigger.get('scheduled_for'))}{extra}"
    if kind == "event":
        return f"event {trigger.get('event')}"
    if kind == "retry":
        return f"retry of {str(trigger.get('source'))[:10]}"
    author = trigger.get("author")
    return f"{kind} {author}" if author else kind


def _when(moment: Any) -> str:
    if not isinstance(moment, datetime):
        return str(moment)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(run: dict, now: datetime) -> str | None:
    if run.get("duration_s") is not None and run.get("finished_at"):
        return duration(run["duration_s"])
    if run.get("started_at") and run["status"] == "running":
        return duration((now - run["started_at"]).total_seconds())
    return None


# -- emit ----------------------------------------------------------------------
@main.command("emit")
@click.argument("event")
@click.option("--data", "data_text", metavar="JSON", help="The event's data (becomes the data of the runs).")
@pass_app
def emit_command(app: AppContext, event: str, data_text: str | None) -> None:
    """Emit EVENT: every enabled job hooked to it gets a run."""
    from sooner.events import emit

    data = parse_json(data_text, "--data")
    store = app.store
    emitted = emit(store, event, data, source={"type": "cli", "author": current_user()},
                   depth_limit=app.settings.chain_depth_limit)
    runs = [store.runs.get(run_id) for run_id in emitted.get("runs") or []]
    for run in runs:
        click.echo(f"started run {run['_id']} of {run['job']}")
    if emitted.get("note"):
        click.echo(emitted["note"])
    elif not runs:
        hooked = store.jobs.with_hook(event)
        click.echo(f"no job is hooked to {event}" if not hooked else
                   f"no run started: {', '.join(j['_id'] for j in hooked)} still running (overlap=skip)")


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
    data = parse_json(data_text, "DATA_JSON")
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
    now = datetime.now(timezone.utc)
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
    data = parse_json(data_text, "--data")
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
    now = datetime.now(timezone.utc)
    heartbeat_s = app.settings.heartbeat_s
    rows = []
    for worker in app.store.workers.list():
        beat = ago(worker.get("heartbeat_at"), now)
        if worker.get("stopped_at"):
            beat = f"stopped {ago(worker['stopped_at'], now)}"
        elif not _online(worker, heartbeat_s, now):
            beat += " (stale)"
        rows.append([worker["_id"], worker.get("host"), worker.get("capacity"), len(worker.get("running") or []),
                     ",".join(worker.get("tags") or []), beat, worker.get("version")])
    echo_table(["name", "host", "capacity", "running", "tags", "heartbeat", "version"], rows,
               "no workers have started yet: run `sooner worker -n NAME`")


def _online(worker: dict, heartbeat_s: float, now: datetime | None = None) -> bool:
    """A worker is online while it has not stopped and its heartbeat is under three intervals (min 5 s) old."""
    beat = worker.get("heartbeat_at")
    if worker.get("stopped_at") or beat is None:
        return False
    now = now or datetime.now(timezone.utc)
    return now - beat <= timedelta(seconds=max(3 * heartbeat_s, 5.0))
