"""``sooner jobs`` and ``sooner job show|enable|disable|set NAME``."""

from __future__ import annotations

from typing import Any

import click

from sooner.cli import AppContext, main, pass_app
from sooner.cli.output import ago, echo_table
from sooner.model import Job, Missed, Overlap


@main.command("jobs")
@click.option("--all", "include_deleted", is_flag=True, help="Include jobs whose script was removed.")
@pass_app
def jobs_command(app: AppContext, include_deleted: bool) -> None:
    """List jobs: name, enabled, schedule, worker, commit, last run, alert (overdue or missed)."""
    from sooner.scheduling.alerts import job_alerts

    store = app.store
    jobs = store.jobs.list(include_deleted=include_deleted)
    last_runs = store.runs.last_per_job([job.name for job in jobs])
    alerts = job_alerts(store, jobs, store.clock.now())
    rows = []
    for job in jobs:
        state = "deleted" if job.deleted else ("yes" if job.enabled else "no")
        schedule = job.schedule
        if schedule and job.timezone != "UTC":
            schedule = f"{schedule} ({job.timezone})"
        run = last_runs.get(job.name)
        last = f"{run.status.value} {ago(run.queued_at)}" if run else None
        alert = alerts[job.name]
        rows.append([job.name, state, schedule, job.worker or "any", (job.commit or "")[:8], last,
                     alert.state.value if alert.alerting else None])
    echo_table(["name", "enabled", "schedule", "worker", "commit", "last run", "alert"], rows,
               "no jobs yet: push an executable script to the site's scripts.git")


@main.group("job")
def job_group() -> None:
    """Show or change one job."""


@job_group.command("show")
@click.argument("name")
@pass_app
def job_show(app: AppContext, name: str) -> None:
    """Show a job's settings and its next 5 fire times."""
    from sooner.scheduling.cron import describe, next_fires

    job = app.store.jobs.get(name)
    status = "deleted" if job.deleted else ("enabled" if job.enabled else "disabled")
    lines = [
        f"job:       {job.name} ({status})",
        f"commit:    {job.commit}",
        f"schedule:  {job.schedule or '-'}" + (f"  ({describe(job.schedule)})" if job.schedule else ""),
        f"timezone:  {job.timezone}",
        f"worker:    {job.worker or 'any'}" + (f" with tags {', '.join(job.requires)}" if job.requires else ""),
        f"at once:   {job.max_concurrent or 'no limit'} (over all workers)",
        f"hooks:     {', '.join(job.hooks) or '-'}",
        f"timeout:   {str(job.timeout_s) + 's' if job.timeout_s else 'none'}",
        f"memory:    {f'{job.memory_limit_mb} MB' if job.memory_limit_mb else 'no limit'}",
        f"overlap:   {job.overlap.value}",
        f"missed:    {job.missed.value}",
        f"dedupe:    {f'{job.dedupe_window_s:g}s window' if job.dedupe_window_s else 'off (dedupe keys are ignored)'}",
        f"alert:     {_alert_line(app, job)}",
        f"badge:     {'public' if job.public_badge else 'signed-in users only'} (/badge/{job.name}.svg)",
        f"notify:    {'; '.join(rule.describe() for rule in job.notify_rules()) or '-'}",
        f"retry:     {job.retry.describe()}" + (f"  (waits {_waits(job)})" if job.retry.attempts else ""),
        f"updated:   {ago(job.updated_at)}",
    ]
    click.echo("\n".join(lines))
    _echo_http_steps(app, job)
    _echo_missed(app, job)
    if job.schedule:
        fires = next_fires(job.schedule, job.timezone, app.store.clock.now(), 5)
        click.echo("next fires:" + ("" if job.enabled else "  (job is disabled: these will not run)"))
        for fire in fires:
            click.echo(f"  {fire.strftime('%Y-%m-%d %H:%M:%S %Z (%z)')}")


def _echo_http_steps(app: AppContext, job: Job) -> None:
    """An HTTP job's kind and steps, as deployed (placeholders, never secret values)."""
    from sooner.model.http_job import InvalidHttpJob, JobKind, parse_http_job

    click.echo(f"kind:      {job.kind.value}")
    if job.kind is not JobKind.HTTP:
        return
    raw = app.store.objects.get_blob(job.blob) if job.blob else None
    try:
        spec = parse_http_job(raw or b"")
    except InvalidHttpJob as exc:
        click.echo(f"steps:     cannot read the deployed document: {exc}")
        return
    click.echo("steps:" + (f"     {spec.description}" if spec.description else ""))
    for number, step in enumerate(spec.steps, 1):
        click.echo(f"  {number}. {step.name}: {step.describe(spec.retry_base_s)}")


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
@click.option("--requires", metavar="TAGS",
              help="Tags a worker must all have to run it, e.g. gpu,eu; '' clears them.")
@click.option("--max-concurrent", "max_concurrent", type=click.IntRange(0, 10_000), metavar="N",
              help="At most N runs of it at once over all workers; 0 = no limit.")
@click.option("--hook", "hooks", multiple=True, help="Also run when this event is emitted (repeatable).")
@click.option("--no-hook", "no_hooks", multiple=True, help="Stop running on this event (repeatable).")
@click.option("--timeout", "timeout_s", type=float, help="Kill a run after this many seconds; 0 = no limit.")
@click.option("--memory-limit", "memory_limit_mb", type=int, metavar="MB",
              help="Kill a run whose processes together hold more than this much memory (RSS); 0 = no limit.")
@click.option("--overlap", type=click.Choice([o.value for o in Overlap]),
              help="When it fires while a run is queued/running: allow, skip (default) or queue.")
@click.option("--missed", type=click.Choice([m.value for m in Missed]),
              help="Ticks missed while no scheduler ran: skip (default) or catch_up_once.")
@click.option("--dedupe-window", "dedupe_window_s", type=float, metavar="SECONDS",
              help="Run requests with the same dedupe key (`sooner run --dedupe-key`) this close together get "
                   "one run; 0 = off.")
@click.option("--public-badge", "public_badge", type=click.Choice(["yes", "no"]),
              help="Show its status badge (/badge/NAME.svg) to anyone (default no: signed-in users only).")
@click.option("--alert-after", "alert_after_s", type=float, metavar="SECONDS",
              help="Alert (overdue) when a tick this old has no run a worker took; 0 = default "
                   "(10%% of the time between ticks, 60 s to 1 h).")
@click.option("--retries", "--retry", "retry_attempts", type=click.IntRange(0, 100),
              help="Retries after a failed, timed-out or lost run (0 = none).")
@click.option("--backoff-base", "backoff_base_s", type=float, metavar="SECONDS",
              help="Wait before the first retry (default 30); later waits grow by --backoff-factor.")
@click.option("--backoff-factor", type=float, help="Each retry waits this many times longer than the one before "
                                                      "(1-10, default 2).")
@click.option("--max-backoff", "max_backoff_s", type=float, metavar="SECONDS",
              help="No retry waits longer than this (default 3600).")
@click.option("--jitter", type=float, metavar="FRACTION",
              help="Spread each wait randomly by up to this fraction (0-1, e.g. 0.1 = ±10%%; default 0).")
@click.option("--notify", metavar="JSON",
              help='Notify rules (replace the job\'s): \'[{"on": ["failure", "recovery"], "to": ["slack://…"]}]\'; '
                   "events failure, recovery, success, missed; targets apprise URLs or webhook+https://…; "
                   "'[]' clears.")
@pass_app
def job_set(app: AppContext, name: str, **options: Any) -> None:
    """Change a job's schedule, timezone, worker, hooks, timeout or policies."""
    from sooner.model.job_settings import settings_changes

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


def _alert_line(app: AppContext, job: Job) -> str:
    """``overdue: expected at …, did not run: …`` / ``ok (after a 60s grace)`` / ``off (…)``."""
    from sooner.model.missed import AlertState
    from sooner.scheduling.alerts import alert_of

    alert = alert_of(app.store, job, app.store.clock.now())
    if alert.alerting:
        return f"{alert.state.value}: {alert.message()}"
    if alert.state is AlertState.OFF:
        return "off (" + (alert.reason or "not watched: the job is disabled or has no schedule") + ")"
    return f"ok (alerts when a tick is {alert.grace_s:g}s old without a run a worker took)"


def _echo_missed(app: AppContext, job: Job, shown: int = 5) -> None:
    page = app.store.missed.page(job.name, limit=shown)
    if not page.items:
        return
    click.echo("missed ticks (newest first):")
    for miss in page.items:
        click.echo(f"  {miss.describe()}" + (f" (run {miss.run})" if miss.run else ""))
    if page.more:
        click.echo(f"  … older ones: GET /api/jobs/{job.name}/missed")


def _describe_change(key: str, job: Job) -> str:
    value = job.to_doc().get(key)
    if key == "hooks":
        value = ",".join(job.hooks) or "none"
    if key == "requires":
        value = ",".join(job.requires) or "none"
    if key == "retry":
        value = job.retry.describe()
    if key == "notify":
        value = "; ".join(rule.describe() for rule in job.notify_rules()) or "nobody"
    return f"{key}={value if value not in (None, '') else 'none'}"


def _waits(job: Job, shown: int = 5) -> str:
    """The retry waits without jitter: ``30s, 60s, 120s``, the rest elided."""
    delays = [f"{d:g}s" for d in job.retry.delays()]
    return ", ".join(delays[:shown]) + (f" … ({len(delays)} in all)" if len(delays) > shown else "")
