"""The ``sooner`` command: parses arguments and wires objects together.

Subcommands live in sibling modules by area and register themselves on
:data:`main`. A :class:`~sooner.errors.SoonerError` becomes one line on stderr
and exit code 1; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import click

from sooner import __version__
from sooner.config import Settings, find_config, load_settings
from sooner.errors import SiteNotFound, SoonerError

if TYPE_CHECKING:
    from sooner.runs.service import RunService


class AppContext:
    """What every command may need, created lazily: settings and the store."""

    def __init__(self, config_path: Path | None) -> None:
        self.config_path = config_path
        self._settings: Settings | None = None
        self._store: Any = None
        self._runs: Any = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            path = self.config_path or find_config()
            self._settings = load_settings(path)
            _configure_logging(self._settings.log_level)
        return self._settings

    @property
    def store(self):
        if self._store is None:
            from sooner.store import open_store

            settings = self.settings
            if settings.mongo_url is None and settings.site_dir is None:
                raise SiteNotFound("no Sooner site here: run `sooner init DIR` and work inside it, "
                                   "pass --config DIR/config.json, or set SOONER_MONGO_URL")
            self._store = open_store(settings)
        return self._store

    @property
    def runs(self) -> RunService:
        """The run service on this command's store: how commands start, cancel and emit."""
        if self._runs is None:
            from sooner.runs.service import RunService

            self._runs = RunService(self.store, self.settings)
        return self._runs

    def close(self) -> None:
        if self._store is not None:
            self._store.close()


# Which module defines each command: a command's module is imported when it is used, so a one-shot
# command does not pay for all the others (issue #12; tests/test_cli_lazy.py keeps this table complete).
# A command missing here still works: an unknown name imports every module first.
# (space-separated names: a command named like a status, `queue`, must not read as one)
_BY_MODULE = {
    "sooner.cli.site": "init db up",
    "sooner.cli.jobs": "jobs job",
    "sooner.cli.deploy": "deploy",
    "sooner.cli.runtime": "scheduler run runs logs emit queue workers",
    "sooner.cli.move": "move",
    "sooner.cli.failed": "retry dismiss",
    "sooner.cli.poison": "discard",
    "sooner.cli.worker": "worker cancel",
    "sooner.cli.web": "web user token",
    "sooner.cli.hooks": "hook sign",
}
COMMAND_MODULES = {command: module for module, commands in _BY_MODULE.items() for command in commands.split()}
MODULES = tuple(_BY_MODULE)


def load_commands(modules: Iterable[str] = MODULES) -> None:
    """Import command modules (importing one registers its commands on :data:`main`)."""
    for module in modules:
        importlib.import_module(module)


class SoonerGroup(click.Group):
    """A click group that reports SoonerError as one clear line and imports its commands when used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        load_commands()  # help lists them all
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands:
            module = COMMAND_MODULES.get(cmd_name)
            load_commands([module] if module else MODULES)
            if cmd_name not in self.commands:
                load_commands()
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SoonerError as exc:
            click.secho(f"sooner: error: {exc}", fg="red", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)


def _configure_logging(level: str) -> None:
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if root.level == logging.WARNING or root.level == logging.NOTSET:
        root.setLevel(level.upper())


@click.group(cls=SoonerGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="sooner")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), envvar="SOONER_CONFIG",
              help="The site's config.json (env SOONER_CONFIG). Default: the nearest site at or above "
                   "the current directory.")
@click.option("-v", "--verbose", is_flag=True, help="Log at info level to stderr.")
@click.pass_context
def main(ctx: click.Context, config_path: Path | None, verbose: bool) -> None:
    """Sooner: a git-driven job scheduler.

    Push executable scripts to the site's scripts.git; each becomes a job
    (disabled until enabled) that runs on a cron schedule, on demand, or when
    another job emits an event.
    """
    if verbose:
        _configure_logging("info")
    app = AppContext(config_path.resolve() if config_path else None)
    ctx.obj = app
    ctx.call_on_close(app.close)


pass_app = click.make_pass_decorator(AppContext)

# The command modules (MODULES) register their commands on `main` when SoonerGroup imports them.


def run() -> None:
    """Console-script entry point: run the CLI, then exit without waiting for idle driver threads.

    PyMongo's monitor threads take ~0.5 s to wind down at interpreter exit;
    short commands (a git hook, `sooner jobs`) would spend longer on that than
    on their work. Commands close their own resources before returning.
    """
    code: int | str | None = 0
    try:
        main()
    except SystemExit as exit_:
        code = exit_.code
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    if isinstance(code, str):
        print(code, file=sys.stderr)
        code = 1
    os._exit(code or 0)
