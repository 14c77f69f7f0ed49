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
        from sooner.site.examples import commit_examples

        for line in commit_examples(settings):
            click.echo(f"  {line}")
    clone_target = "~/sooner-scripts"  # outside the site, and outside whatever checkout we run in
    click.echo(
        "Next:\n"
        f"  git clone {settings.repo_path} {clone_target}    # then add executable scripts and git push\n"
        f"  export SOONER_CONFIG={settings.site_path('config.json')}    # or work inside {settings.site_dir}"
    )


@main.group("db")
def db_group() -> None:
    """Manage the embedded database of this site (not used when mongo_url is set)."""


def _embedded(app: AppContext):
    from sooner.store.embedded import EmbeddedServer

    settings = app.settings
    if settings.mongo_url:
        raise SoonerError("this site uses mongo_url; the embedded database is not used")
    return EmbeddedServer(settings.state_dir, settings.embedded_idle_stop_s)


@db_group.command("status")
@pass_app
def db_status(app: AppContext) -> None:
    """Show whether the embedded database is running, its port and size."""
    status = _embedded(app).status()
    state = f"running (pid {status.pid}, {status.url})" if status.running else "stopped"
    if status.running:
        state += ("; kept running until `sooner db stop`" if status.kept else
                  f"; started on demand, stops after {status.idle_stop_s:g} s without clients" if status.idle_stop_s
                  else "")
    click.echo(f"embedded database: {state}\ndata: {status.data_dir} ({status.data_bytes / 1e6:.1f} MB)")


@db_group.command("start")
@pass_app
def db_start(app: AppContext) -> None:
    """Start the embedded database and keep it running until `sooner db stop`.

    Commands also start it on demand; such a server stops itself after
    embedded_idle_stop_s without clients. This one (or a running one) does not.
    """
    url = _embedded(app).ensure_running(keep=True)
    click.echo(f"embedded database running at {url} (kept running until `sooner db stop`)")


@db_group.command("stop")
@pass_app
def db_stop(app: AppContext) -> None:
    """Stop the embedded database."""
    stopped = _embedded(app).stop(say=click.echo)
    click.echo("embedded database stopped" if stopped else "embedded database was not running")


@main.command("up")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path), required=False)
@click.option("--host", help="Web server address (default: web_host from the config, 127.0.0.1).")
@click.option("--port", type=click.IntRange(1, 65535), help="Web server port (default: web_port, 8080).")
@click.option("-n", "--worker-name", default="local", show_default=True, help="Name of the local worker.")
@click.option("--capacity", type=click.IntRange(1, 1000), help="Runs the local worker executes at once.")
@pass_app
def up_command(app: AppContext, directory: Path | None, host: str | None, port: int | None,
               worker_name: str, capacity: int | None) -> None:
    """Run web + scheduler + a local worker for the site in DIRECTORY (created if new).

    Without DIRECTORY, the site of the current directory (or --config) is used.
    Ctrl-C stops everything, the embedded database last.
    """
    from sooner.config import CONFIG_FILE, load_settings
    from sooner.site import ignore_pattern, init_site, unignored_work_tree
    from sooner.site.up import exec_up

    if directory is not None:
        config_path = directory.resolve() / CONFIG_FILE
        if not config_path.exists():
            init_site(directory)
            click.echo(f"Created a Sooner site in {directory.resolve()}")
        settings = load_settings(config_path)
    else:
        settings = app.settings
        if settings.site_dir is None:
            raise SoonerError("no Sooner site here: give a folder (`sooner up ~/sooner-site` creates one) or --config")
        config_path = settings.site_dir / CONFIG_FILE
    work_tree = unignored_work_tree(config_path.parent)
    if work_tree is not None:
        click.secho(f"sooner up: WARNING: the site {config_path.parent} is inside the git work tree {work_tree}, "
                    f"which does not ignore it: `git add -A` there would commit {CONFIG_FILE} and its session "
                    f"secret. Move the site out, or add {ignore_pattern(config_path.parent, work_tree)!r} to "
                    f"{work_tree / '.gitignore'}", fg="yellow", bold=True, err=True)
    # Becomes the lean gunicorn master (same pid): web, scheduler and worker run in its one worker process.
    exec_up(config_path, host or settings.web_host, port or settings.web_port, worker_name, capacity)
