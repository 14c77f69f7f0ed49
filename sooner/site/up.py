"""``sooner up``: web + scheduler + one local worker for a single machine.

``sooner up`` is the gunicorn master of one web worker process that also
runs the scheduler (with its notifier) and the local worker as threads
(:mod:`sooner.site.one_process`): three processes with the embedded database
and the worker's launcher, instead of six interpreters. The code paths are
those of ``sooner web``, ``sooner scheduler`` and ``sooner worker``, which
stay the commands for real deployments. The worker process starts (or
adopts) the embedded database first and keeps it running meanwhile (it never
stops for being idle); Ctrl-C or SIGTERM stops everything, the database last.

The ``sooner up`` command checks what it can (the site, the worker name, the
port), then replaces itself (``exec``, same pid) with ``python -m
sooner.site.up``: a master that imports neither click nor the CLI's modules,
which would otherwise sit in the master for its whole life.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import sys
from pathlib import Path
from typing import Any, Callable

from sooner.config import Settings


def ensure_first_admin(store, echo: Callable[[str], None]) -> None:
    """On a site without users, create ``admin`` with a random password and show it once."""
    users = getattr(store, "users", None)
    if users is None or users.count():
        return
    password = secrets.token_urlsafe(12)
    users.add("admin", password, admin=True)
    echo(f"First start: created web user 'admin' with password {password}\n"
         f"  (shown once; change it with `sooner user passwd admin`)")


def exec_up(config_path: Path, host: str, port: int, worker_name: str, capacity: int | None) -> None:
    """Check the worker name and the port, then become the lean master (:func:`main`); never returns."""
    from sooner.gunicorn_app import check_can_listen
    from sooner.model.job_settings import validate_worker_name

    validate_worker_name(worker_name, "-n/--worker-name")  # before anything claims to be up
    check_can_listen(host, port)
    argv = [sys.executable, "-m", "sooner.site.up", "--config", str(config_path), "--host", host,
            "--port", str(port), "--worker-name", worker_name] + (["--capacity", str(capacity)] if capacity else [])
    level = logging.getLogger().level  # the CLI's, `-v` included
    if level != logging.NOTSET:
        argv += ["--log-level", logging.getLevelName(level)]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)


def run_up(settings: Settings, host: str, port: int, worker_name: str, capacity: int | None,
           echo: Callable[[str], None] = print) -> int:
    """Run everything until interrupted; returns the exit code.

    This process stays lean (no Flask, no PyMongo until the end): it is the
    gunicorn master, and whatever it imports before the fork its worker
    process shares.
    """
    from sooner.gunicorn_app import check_can_listen
    from sooner.site.one_process import serve_up

    check_can_listen(host, port)  # again: the port may have been taken meanwhile

    def load_app() -> Any:  # in the worker process
        from sooner.store import open_store
        from sooner.webapp import create_app
        from sooner.webapp.server import _warm

        if settings.mongo_url is None:
            from sooner.store.embedded import EmbeddedServer

            # Started (or adopted) to keep running: not stopped when idle, but at the end of `up`.
            EmbeddedServer(settings.state_dir, settings.embedded_idle_stop_s).ensure_running(keep=True)
        store = open_store(settings)
        try:
            ensure_first_admin(store, echo)
        finally:
            store.close()
        app, _socketio = create_app(settings)
        _warm(app)
        return app

    code = serve_up(settings, host, port, worker_name, capacity, load_app, echo)
    if settings.mongo_url is None:
        from sooner.store.embedded import EmbeddedServer

        EmbeddedServer(settings.state_dir).stop()
    echo("Sooner stopped.")
    return code


def main() -> None:
    """``python -m sooner.site.up``: the master that ``sooner up`` execs into (its options are checked already)."""
    from sooner.config import load_settings
    from sooner.errors import SoonerError

    parser = argparse.ArgumentParser(prog="sooner up")
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--worker-name", required=True)
    parser.add_argument("--capacity", type=int)
    parser.add_argument("--log-level")
    args = parser.parse_args()

    def echo(line: str) -> None:
        print(line, flush=True)
    try:
        settings = load_settings(args.config)
        # As the CLI does (sooner.cli._configure_logging), without importing it.
        logging.basicConfig(stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                            level=(args.log_level or settings.log_level).upper())
        code = run_up(settings, args.host, args.port, args.worker_name, args.capacity, echo)
    except SoonerError as exc:
        print(f"sooner: error: {exc}", file=sys.stderr, flush=True)
        code = 1
    sys.exit(code)


if __name__ == "__main__":
    main()
