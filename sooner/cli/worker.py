"""``sooner worker`` and ``sooner cancel RUN``."""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
from pathlib import Path

import click
from click.core import ParameterSource

from sooner.cli import AppContext, main, pass_app
from sooner.model import RunStatus
from sooner.model.job_settings import validate_worker_name

logger = logging.getLogger(__name__)


@main.command("worker")
@click.option("-n", "--name", default=None, envvar="SOONER_WORKER_NAME",
              help="Worker name, unique among live workers (env SOONER_WORKER_NAME; default: the host name).")
@click.option("--capacity", type=click.IntRange(1, 1000), default=None,
              help="Runs executed at once (default: the worker_capacity setting, env SOONER_WORKER_CAPACITY).")
@click.option("--tags", default="", envvar="SOONER_WORKER_TAGS",
              help="Comma-separated tags; jobs whose `worker` is one of them may run here (env SOONER_WORKER_TAGS).")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              envvar="SOONER_WORKER_CACHE_DIR",
              help="Where deployed trees are materialised (env SOONER_WORKER_CACHE_DIR; default: the site's "
                   "cache_dir, or ~/.cache/sooner without a site).")
@pass_app
def worker_command(app: AppContext, name: str | None, capacity: int | None, tags: str, cache_dir: Path | None) -> None:
    """Run jobs: claim queued runs and execute their scripts until SIGTERM/Ctrl-C.

    On the first signal the worker stops claiming and lets running runs finish
    for shutdown_grace_s, then cancels them; a second signal cancels at once.
    """
    from sooner.worker.loop import Worker

    name = _worker_name(name)
    tag_list = [validate_worker_name(tag, _option_source("tags", "--tags", "SOONER_WORKER_TAGS"), "tag")
                for tag in (t.strip() for t in tags.split(",")) if tag]
    worker = Worker(app.store, app.settings, name, capacity, service=app.runs, tags=tag_list, cache=cache_dir)
    worker.register()
    stop, hurry = threading.Event(), threading.Event()

    def request_stop(signum: int, frame: object) -> None:
        (hurry if stop.is_set() else stop).set()
        worker.finished.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    tag_text = ", ".join(worker.tags) or "none"
    click.echo(f"worker {worker.name} ready (capacity {worker.capacity}, tags {tag_text})")
    sys.stdout.flush()
    worker.run_forever(stop, hurry)
    if worker.lost_name:
        click.echo(f"worker {worker.name}: another process took this name; stopped", err=True)
        raise SystemExit(1)
    click.echo(f"worker {worker.name} stopped")


def _worker_name(name: str | None) -> str:
    """The name from -n, else SOONER_WORKER_NAME, else the host name; an empty or invalid one is an error.

    Click ignores an empty variable, so ``SOONER_WORKER_NAME=''`` is looked
    up here: it must not quietly become the host name.
    """
    if name is None and "SOONER_WORKER_NAME" in os.environ:
        return validate_worker_name(os.environ["SOONER_WORKER_NAME"], "SOONER_WORKER_NAME")
    if name is None:
        return validate_worker_name(socket.gethostname(), "the host name (give one with -n NAME)")
    return validate_worker_name(name, _option_source("name", "-n/--name", "SOONER_WORKER_NAME"))


def _option_source(param: str, flag: str, variable: str) -> str:
    """How an error names an option's value: the flag, or the variable it came from."""
    source = click.get_current_context().get_parameter_source(param)
    return variable if source is ParameterSource.ENVIRONMENT else flag


@main.command("cancel")
@click.argument("run_id", metavar="RUN")
@pass_app
def cancel_command(app: AppContext, run_id: str) -> None:
    """Cancel RUN (JOB#N or an id): a queued run ends now; a running one gets SIGTERM, then SIGKILL."""
    run = app.runs.cancel(run_id, by="cli")
    if run.status is RunStatus.CANCELLED:
        click.echo(f"cancelled run {run.ref} (it had not started)")
        return
    grace = app.settings.cancel_grace_s
    click.echo(f"asked worker {run.worker} to cancel run {run.ref} "
               f"(SIGTERM, then SIGKILL after {grace:g}s)")
