"""``sooner hook add|list|remove`` (webhooks: ``POST /hooks/<provider>/<name>``) and ``sooner sign`` (signed trigger URLs)."""

from __future__ import annotations

import click

from sooner.cli import AppContext, main, pass_app
from sooner.cli.output import ago, echo_table
from sooner.errors import SoonerError
from sooner.model.data import load_json
from sooner.model.signed_url import parse_expires, sign, signing_key
from sooner.model.webhook import PROVIDERS


def public_url(app: AppContext, given: str | None) -> str:
    """The web server's address for printed URLs: ``--base-url``, else http://web_host:web_port."""
    if given:
        return given.rstrip("/")
    settings = app.settings
    return f"http://{settings.web_host}:{settings.web_port}"


@main.group("hook")
def hook_group() -> None:
    """Webhooks from GitHub, GitLab, Gitea/Forgejo or Standard Webhooks senders that start a job."""


@hook_group.command("add")
@click.argument("provider", type=click.Choice(PROVIDERS))
@click.argument("name")
@click.option("--job", "job_name", required=True, help="The job each accepted delivery runs.")
@click.option("--event", "events", multiple=True, help="Only these events (repeatable; default: any but ping).")
@click.option("--branch", "branches", multiple=True, help="Only pushes to these branches (repeatable; default: any).")
@click.option("--secret", default=None, help="The shared secret (default: a random one, printed once).")
@click.option("--base-url", default=None, help="The web server's public address, for the printed URL.")
@pass_app
def add_command(app: AppContext, provider: str, name: str, job_name: str, events: tuple[str, ...],
                branches: tuple[str, ...], secret: str | None, base_url: str | None) -> None:
    """Add hook NAME for PROVIDER: deliveries to /hooks/PROVIDER/NAME run --job."""
    from sooner.cli.runtime import current_user

    hook = app.store.hooks.create(provider, name, job_name, secret=secret, events=events, branches=branches,
                                  by=current_user())
    click.echo(f"hook {hook.name}: {public_url(app, base_url)}/hooks/{provider}/{hook.name} runs {hook.job}")
    if secret is None:
        click.echo(f"secret (shown only now; give it to {provider}): {hook.secret}")


@hook_group.command("list")
@click.option("--log", "log_of", default=None, metavar="NAME", help="Show the hook's recent deliveries instead.")
@pass_app
def list_command(app: AppContext, log_of: str | None) -> None:
    """List hooks, or with --log NAME the hook's newest deliveries."""
    store = app.store
    if log_of is not None:
        if store.hooks.get(log_of) is None:
            raise SoonerError(f"no hook named {log_of!r} (see `sooner hook list`)")
        rows = [[ago(doc.get("t")), doc.get("state"), doc.get("status"), doc.get("delivery"), doc.get("event"),
                 doc.get("run"), doc.get("reason")] for doc in store.deliveries.log(log_of)]
        echo_table(["when", "state", "answer", "delivery", "event", "run", "reason"], rows, "no deliveries yet")
        return
    rows = [[hook.name, hook.provider, hook.job, ", ".join(hook.events) or "any",
             ", ".join(hook.branches) or "any", f"/hooks/{hook.provider}/{hook.name}"] for hook in store.hooks.all()]
    echo_table(["name", "provider", "job", "events", "branches", "path"], rows,
               "no hooks yet: `sooner hook add github NAME --job JOB`")


@hook_group.command("remove")
@click.argument("name")
@pass_app
def remove_command(app: AppContext, name: str) -> None:
    """Remove hook NAME and its delivery log (runs it started stay)."""
    if not app.store.hooks.remove(name):
        raise SoonerError(f"no hook named {name!r} (see `sooner hook list`)")
    click.echo(f"removed hook {name}")


@main.command("sign")
@click.argument("job_name", metavar="JOB")
@click.option("--data", "data_text", default=None, help="JSON the run gets as its data (at most 4 KiB).")
@click.option("--expires", default="7d", show_default=True, help="How long the URL works: 90s, 30m, 12h, 7d, 2w.")
@click.option("--base-url", default=None, help="The web server's public address, for the printed URL.")
@pass_app
def sign_command(app: AppContext, job_name: str, data_text: str | None, expires: str, base_url: str | None) -> None:
    """Print a signed URL whose GET runs JOB (add ?wait=30 to get its output); anyone with it may run JOB."""
    job = app.store.jobs.get(job_name)
    data = load_json(data_text, "--data") if data_text is not None else None
    expires_at = app.store.clock.now() + parse_expires(expires)
    token = sign(signing_key(app.settings.secret_key or ""), job.name, data, expires_at)
    click.echo(f"{public_url(app, base_url)}/t/{token}")
    click.echo(f"valid until {expires_at:%Y-%m-%d %H:%M:%S} UTC", err=True)
