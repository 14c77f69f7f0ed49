"""The Failed view in the CLI: ``sooner runs --failed`` (rendered here), ``sooner retry RUN…``, ``sooner dismiss RUN…``."""

from __future__ import annotations

import sys

import click

from sooner.cli import AppContext, main, pass_app
from sooner.cli.output import ago, echo_table
from sooner.model import Job, Run
from sooner.model.failed import BulkResult, FailedQuery, InvalidFailedQuery


def show_failed(app: AppContext, *, job: str | None, worker: str | None, search: str | None, sort: str,
                group_by: str | None, limit: int) -> None:
    """Print the Failed view: the runs, or with ``group_by`` one line per group with its count."""
    try:
        query = FailedQuery(job=job, worker=worker, search=search, sort=sort, group_by=group_by,
                            limit=min(limit, 1000))
    except InvalidFailedQuery as exc:
        raise click.UsageError(str(exc)) from None
    store = app.store
    page = store.failed.page(query)
    now = store.clock.now()
    if group_by:
        echo_table([group_by, "runs", "last failed"], [[g.key, g.count, ago(g.newest, now)] for g in page.groups],
                   _empty(query))
    else:
        jobs = jobs_of(app, page.runs)
        rows = [[run.ref, run.status.value, attempt_label(run, jobs), run.worker, ago(run.finished_at, now),
                 _excerpt(run.error), run.id] for run in page.runs]
        echo_table(["run", "status", "attempt", "worker", "ended", "error", "id"], rows, _empty(query))
        if page.total > len(page.runs):
            click.echo(f"… and {page.total - len(page.runs)} more (use --limit, --job or --group-by)")
    if page.truncated:
        click.secho("sooner: warning: the Failed view holds more runs than one listing reads; "
                    "dismiss or retry some, or filter by job", fg="yellow", err=True)


def jobs_of(app: AppContext, runs: list[Run]) -> dict[str, Job]:
    """The jobs of these runs that still exist, by name (for their retry policies)."""
    found = {}
    for name in {run.job for run in runs}:
        job = app.store.jobs.find(name)
        if job is not None:
            found[name] = job
    return found


def attempt_label(run: Run, jobs: dict[str, Job]) -> str:
    """``2/3`` when the run's job still exists, else the attempt number."""
    job = jobs.get(run.job)
    return job.retry.attempt_label(run.attempt) if job else str(run.attempt)


def chain_line(app: AppContext, run: Run) -> str | None:
    """``attempt 2/3: a.sh#4 failed → a.sh#5 (this) running`` for a run with more than one attempt, else None."""
    chain = app.store.reads.chain(run)
    if len(chain) < 2:
        return None
    job = app.store.jobs.find(run.job)
    label = job.retry.attempt_label(run.attempt) if job else str(run.attempt)
    steps = " → ".join(f"{r.ref}{' (this)' if r.id == run.id else ''} {r.status.value}" for r in chain)
    return f"attempt {label}: {steps}"


@main.command("retry")
@click.argument("run_ids", metavar="RUN...", nargs=-1, required=True)
@pass_app
def retry_command(app: AppContext, run_ids: tuple[str, ...]) -> None:
    """Queue a new attempt of each failed, timed-out or lost RUN now (it leaves the Failed view)."""
    from sooner.cli.runtime import current_user

    _report(app.runs.retry_many(run_ids, by=current_user(), source="cli"))


@main.command("dismiss")
@click.argument("run_ids", metavar="RUN...", nargs=-1, required=True)
@pass_app
def dismiss_command(app: AppContext, run_ids: tuple[str, ...]) -> None:
    """Take each RUN out of the Failed view without retrying it (its status stays)."""
    from sooner.cli.runtime import current_user

    _report(app.store.failed.dismiss(run_ids, by=current_user()))


def _report(results: list[BulkResult]) -> None:
    """One line per run; exit code 1 when any of them was refused."""
    for result in results:
        if result.ok:
            click.echo(f"{result.id}: {result.message}")
        else:
            click.secho(f"sooner: error: {result.id}: {result.message}", fg="red", err=True)
    if not all(result.ok for result in results):
        sys.exit(1)


def _empty(query: FailedQuery) -> str:
    filtered = query.job or query.worker or query.search
    return "no failed runs match" if filtered else "no failed runs: nothing failed without a further attempt"


def _excerpt(text: str, width: int = 70) -> str:
    line = text.splitlines()[0] if text else ""
    return line if len(line) <= width else line[:width - 1] + "…"
