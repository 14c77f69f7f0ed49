"""The poison list in the CLI: ``sooner runs --poison`` (rendered here) and ``sooner discard RUN…``.

``sooner retry RUN…`` (:mod:`sooner.cli.failed`) retries a poison run too: the new attempt takes it off the list.
"""

from __future__ import annotations

import click

from sooner.cli import AppContext, main, pass_app
from sooner.cli.output import ago, echo_table


def show_poison(app: AppContext, *, job: str | None, limit: int) -> None:
    """Print the poison list: HTTP job runs whose steps failed every attempt, not retried or discarded."""
    store = app.store
    runs, total, truncated = store.poison.page(job=job, limit=min(limit, 1000))
    now = store.clock.now()
    rows = [[run.ref, run.worker, ago(run.finished_at, now), _excerpt(run.note or ""), run.id] for run in runs]
    echo_table(["run", "worker", "ended", "why", "id"], rows,
               "no poison runs of this job" if job else "no poison runs")
    if total > len(runs):
        click.echo(f"… and {total - len(runs)} more (use --limit or --job)")
    if runs:
        click.echo("`sooner retry RUN` queues a new attempt; `sooner discard RUN` takes a run off the list")
    if truncated:
        click.secho("sooner: warning: more poison runs exist than one listing reads; discard or retry some",
                    fg="yellow", err=True)


@main.command("discard")
@click.argument("run_ids", metavar="RUN...", nargs=-1, required=True)
@pass_app
def discard_command(app: AppContext, run_ids: tuple[str, ...]) -> None:
    """Take each poison RUN off the poison list without retrying it (its status stays poison)."""
    from sooner.cli.failed import _report
    from sooner.cli.runtime import current_user

    _report(app.store.poison.discard(run_ids, by=current_user()))


def _excerpt(text: str, width: int = 80) -> str:
    line = text.splitlines()[0] if text else ""
    return line if len(line) <= width else line[:width - 1] + "…"
