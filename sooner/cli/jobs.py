"""``sooner jobs`` and ``sooner job show|enable|disable|set NAME``."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import click

from sooner.cli import AppContext, main, pass_app
from sooner.cli.output import ago, echo_table
from sooner.store.jobs import Missed, Overlap


@main.command("jobs")
@click.option("--all", "include_deleted", is_flag=True, help="Include jobs whose script was removed.")
@pass_app
def jobs_command(app: AppContext, include_deleted: bool) -> None:
    """List jobs: name, enabled, schedule, worker, commit, last run."""
    store = app.store
    jobs = store.jobs.list(include_deleted=include_deleted)
    last_runs = _last_runs(store, [job["_id"] for job in jobs])
    rows = []
    for job in jobs:
        state = "deleted" if job.get("deleted") else ("yes" if job.get("enabled") else "no")
        schedule = job.get("schedule")
        if schedule and job.get("timezone", "UTC") != "UTC":
            schedule = f"{schedule} ({job['timezone']})"
        run = last_runs.get(job["_id"])
        last = f"{run['status']} {ago(run.get('queued_at'))}" if run else None
        rows.append([job["_id"], state, schedule, job.get("worker") or "any", (job.get("commit") or "")[:8], last])
    echo_table(["name", "enabled", "schedule", "worker", "commit", "last run"], rows,
               "no jobs yet: push an executable script to the site's scripts.git")


def _last_runs(store: Any, names: list[str]) -> dict[str, dict]:
    runs = getattr(store, "runs", None)
    return runs.last_per_job(names) if runs is not None else {}


@main.group("job")
def job_group() -> None:
    """Show or change one job."""


@job_group.command("show")
@click.argument("name")
@pass_app
def job_show(app: AppContext, name: str) -> None:
    """Show a job's settings and its next 5 fire times."""
    from sooner.schedule import describe, next_fires

    job = app.store.jobs.get(name)
    status = "deleted" if job.get("deleted") else ("enabled" if job.get("enabled") else "disabled")
    lines = [
        f"job:       {job['_id']} ({status})",
        f"commit:    {job.get('commit')}",
        f"schedule:  {job.get('schedule') or '-'}" + (f"  ({describe(job['schedule'])})" if job.get("schedule") else ""),
        f"timezone:  {job.get('timezone', 'UTC')}",
        f"worker:    {job.get('worker') or 'any'}",
        f"hooks:     {', '.join(job.get('hooks') or []) or '-'}",
        f"timeout:   {str(job['timeout_s']) + 's' if job.get('timeout_s') else 'none'}",
        f"overlap:   {job.get('overlap', Overlap.SKIP.value)}",
        f"missed:    {job.get('missed', Missed.SKIP.value)}",
        f"retry:     {(job.get('retry') or {}).get('attempts', 0)} attempt(s)",
        f"updated:   {ago(job.get('updated_at'))}",
    ]
    click.echo("\n".join(lines))
    if job.get("schedule"):
        fires = next_fires(job["schedule"], job.get("timezone", "UTC"), datetime.now(timezone.utc), 5)
        click.echo("next fires:" + ("" if job.get("enabled") else "  (job is disabled: these will not run)"))
        for fire in fires:
            click.echo(f"  {fire.strftime('%Y-%m-%d %H:%M:%S %Z (%z)')}")


@job_group.command("enable")
@click.argument("name")
@pass_app
def job_enable(app: AppContext, name: str) -> None:
    """Enable a job: its schedule and hooks start firing."""
    app.store.jobs.set_enabled(name, True)
    click.echo(f"enabled {name}")


@job_group.command("disable")
@click.argument("name")
@pass_app
def job_disable(app: AppContext, name: str) -> None:
    """Disable a job: nothing fires it (runs already queued still run)."""
    app.store.jobs.set_enabled(name, False)
    click.echo(f"disabled {name}")


@job_group.command("set")
@click.argument("name")
@click.option("--schedule", help="Cron string (5 fields, optional seconds, or @hourly…); '' clears it.")
@click.option("--timezone", "tz", help="IANA timezone the schedule is read in, e.g. Europe/Berlin.")
@click.option("--worker", help="Worker name or tag that must run it; '' = any worker.")
@click.option("--hook", "hooks", multiple=True, help="Also run when this event is emitted (repeatable).")
@click.option("--no-hook", "no_hooks", multiple=True, help="Stop running on this event (repeatable).")
@click.option("--timeout", "timeout_s", type=float, help="Kill a run after this many seconds; 0 = no limit.")
@click.option("--overlap", type=click.Choice([o.value for o in Overlap]),
              help="When it fires while a run is queued/running: allow, skip (default) or queue.")
@click.option("--missed", type=click.Choice([m.value for m in Missed]),
              help="Ticks missed while no scheduler ran: skip (default) or catch_up_once.")
@click.option("--retry", "retry_attempts", type=click.IntRange(0, 100), help="Retries after a failed or lost run.")
@pass_app
def job_set(app: AppContext, name: str, **options: Any) -> None:
    """Change a job's schedule, timezone, worker, hooks, timeout or policies."""
    from sooner.jobs import settings_changes

    store = app.store
    job = store.jobs.get(name)
    changes = settings_changes(job, options)
    if not changes and not options["hooks"] and not options["no_hooks"]:
        raise click.UsageError("nothing to change: give at least one option (see --help)")
    job = store.jobs.update_settings(name, changes, add_hooks=options["hooks"], remove_hooks=options["no_hooks"])
    click.echo(f"updated {name}: " + ", ".join(_describe_change(k, job) for k in sorted(
        set(changes) | ({"hooks"} if options["hooks"] or options["no_hooks"] else set()))))
    if changes.get("worker"):
        from sooner.cli.runtime import warn_if_no_worker

        warn_if_no_worker(app, changes["worker"])


def _describe_change(key: str, job: dict) -> str:
    value = job.get(key)
    if key == "hooks":
        value = ",".join(value or []) or "none"
    if key == "retry":
        value = (value or {}).get("attempts", 0)
    return f"{key}={value if value not in (None, '') else 'none'}"
