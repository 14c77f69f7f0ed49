"""``sooner move RUN --worker NAME | --tag TAG | --any [--kill]``: send a run to another worker or tag."""

from __future__ import annotations

import click

from sooner.cli import AppContext, main, pass_app
from sooner.cli.runtime import current_user


@main.command("move")
@click.argument("run_id", metavar="RUN")
@click.option("--worker", metavar="NAME", help="Only the worker named NAME may take it.")
@click.option("--tag", metavar="TAG", help="Any worker tagged TAG may take it.")
@click.option("--any", "any_worker", is_flag=True, help="Any worker may take it.")
@click.option("--kill", is_flag=True,
              help="If it is running: cancel it there and queue a new attempt (same data) on the new target.")
@pass_app
def move_command(app: AppContext, run_id: str, worker: str | None, tag: str | None, any_worker: bool,
                 kill: bool) -> None:
    """Move a queued or waiting run (RUN: JOB#N or an id) to another worker or tag.

    A run that started meanwhile is left alone unless --kill is given. An unknown
    worker or tag is accepted (it may come online later) with a warning.
    """
    from sooner.model.target import ANY_WORKER, describe_target, tag_target, worker_target

    if sum((worker is not None, tag is not None, any_worker)) != 1:
        raise click.UsageError("give exactly one of --worker NAME, --tag TAG or --any")
    target = worker_target(worker, "--worker") if worker is not None else (
        tag_target(tag, "--tag") if tag is not None else ANY_WORKER)
    moved = app.runs.move(run_id, target, by=current_user(), kill=kill)
    if moved.relocated_from is not None:
        old = moved.relocated_from
        click.echo(f"run {old.ref} is being stopped on worker {old.worker}; it continues as run {moved.run.ref} "
                   f"on {describe_target(target)}")
    else:
        click.echo(f"moved run {moved.run.ref} to {describe_target(target)}")
    if moved.warning:
        click.secho(f"sooner: warning: {moved.warning}", fg="yellow", err=True)
