"""``sooner init`` and ``sooner db status|start|stop``."""

from __future__ import annotations

from pathlib import Path

import click

from sooner.cli import AppContext, main, pass_app
from sooner.errors import SoonerError


@main.command("init")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path), default=".")
@click.option("--examples", is_flag=True, help="Commit the example jobs into the new site's repository (disabled).")
def init_command(directory: Path, examples: bool) -> None:
    """Create a site in DIRECTORY: config.json, scripts.git and its working copy."""
    from sooner.site import init_site

    settings = init_site(directory)
    click.echo(f"Created a Sooner site in {settings.site_dir}")
    if examples:
        from sooner.examples import commit_examples

        for line in commit_examples(settings):
            click.echo(f"  {line}")
    clone_target = "mine"
    click.echo(
        "Next:\n"
        f"  git clone {settings.repo_path} {clone_target}    # then add executable scripts and git push\n"
        f"  export SOONER_CONFIG={settings.site_dir / 'config.json'}    # or work inside {settings.site_dir}"
    )


@main.group("db")
def db_group() -> None:
    """Manage the embedded database of this site (not used when mongo_url is set)."""


def _embedded(app: AppContext):
    from sooner.store.embedded import EmbeddedServer

    settings = app.settings
    if settings.mongo_url:
        raise SoonerError("this site uses mongo_url; the embedded database is not used")
    return EmbeddedServer(settings.state_dir)


@db_group.command("status")
@pass_app
def db_status(app: AppContext) -> None:
    """Show whether the embedded database is running, its port and size."""
    status = _embedded(app).status()
    state = f"running (pid {status.pid}, {status.url})" if status.running else "stopped"
    click.echo(f"embedded database: {state}\ndata: {status.data_dir} ({status.data_bytes / 1e6:.1f} MB)")


@db_group.command("start")
@pass_app
def db_start(app: AppContext) -> None:
    """Start the embedded database (commands also start it on demand)."""
    url = _embedded(app).ensure_running()
    click.echo(f"embedded database running at {url}")


@db_group.command("stop")
@pass_app
def db_stop(app: AppContext) -> None:
    """Stop the embedded database."""
    stopped = _embedded(app).stop()
    click.echo("embedded database stopped" if stopped else "embedded database was not running")
