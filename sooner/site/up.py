"""``sooner up``: web + scheduler + one local worker for a single machine.

Each part runs as its own child process (``python -m sooner web`` …), exactly
as in a real deployment, so ``up`` adds no code path of its own: it starts the
embedded database first, supervises the children, stops them all on Ctrl-C or
SIGTERM (or when one of them dies), and stops the database last. The database
it starts (or finds) is kept running meanwhile: it never stops for being idle.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from sooner.config import Settings

logger = logging.getLogger(__name__)


@dataclass
class Part:
    """One supervised child process."""

    name: str
    args: list[str]
    process: subprocess.Popen | None = None


def parts(host: str, port: int, worker_name: str, capacity: int | None) -> list[Part]:
    worker = ["worker", "-n", worker_name] + (["--capacity", str(capacity)] if capacity else [])
    return [
        Part("web", ["web", "--host", host, "--port", str(port)]),
        Part("scheduler", ["scheduler"]),
        Part("worker", worker),
    ]


class Supervisor:
    """Start parts, wait until asked to stop or until one exits, then stop the rest."""

    def __init__(self, config_path: Path, grace_s: float, echo: Callable[[str], None] = print) -> None:
        self.config_path = config_path
        self.grace_s = grace_s
        self.echo = echo
        self.stop_event = threading.Event()

    def run(self, to_start: list[Part]) -> int:
        env = {**os.environ, "SOONER_CONFIG": str(self.config_path)}
        for part in to_start:
            part.process = subprocess.Popen([sys.executable, "-m", "sooner", *part.args], env=env)
        failed = None
        while not self.stop_event.is_set() and failed is None:
            failed = next((p for p in to_start if p.process and p.process.poll() is not None), None)
            self.stop_event.wait(0.2)
        if failed is not None:
            assert failed.process is not None, "only a started part can have exited"
            self.echo(f"sooner up: {failed.name} exited with code {failed.process.returncode}; stopping the rest")
        self._stop(to_start)
        return 0 if failed is None else 1

    def _stop(self, running: list[Part]) -> None:
        alive = [(p, p.process) for p in running if p.process and p.process.poll() is None]
        for _part, process in alive:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s + 5
        for part, process in alive:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.echo(f"sooner up: {part.name} did not stop in time; killing it")
                process.kill()
                process.wait()


def ensure_first_admin(store, echo: Callable[[str], None]) -> None:
    """On a site without users, create ``admin`` with a random password and show it once."""
    users = getattr(store, "users", None)
    if users is None or users.count():
        return
    password = secrets.token_urlsafe(12)
    users.add("admin", password, admin=True)
    echo(f"First start: created web user 'admin' with password {password}\n"
         f"  (shown once; change it with `sooner user passwd admin`)")


def run_up(settings: Settings, config_path: Path, host: str, port: int, worker_name: str,
           capacity: int | None, echo: Callable[[str], None] = print) -> int:
    """Run everything until interrupted; returns the exit code."""
    from sooner.store import open_store
    from sooner.store.embedded import EmbeddedServer
    from sooner.webapp.server import check_can_listen

    from sooner.model.job_settings import validate_worker_name

    validate_worker_name(worker_name, "-n/--worker-name")  # before anything claims to be up
    check_can_listen(host, port)
    if settings.mongo_url is None:
        # Started (or adopted) to keep running: not stopped when idle, but at the end of `up`.
        EmbeddedServer(settings.state_dir, settings.embedded_idle_stop_s).ensure_running(keep=True)
    store = open_store(settings)
    ensure_first_admin(store, echo)
    store.close()
    # A worker may take shutdown_grace_s to let runs finish, then cancel_grace_s to stop the rest.
    supervisor = Supervisor(config_path, settings.shutdown_grace_s + settings.cancel_grace_s, echo)

    def request_stop(signum: int, frame: object) -> None:
        supervisor.stop_event.set()
    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    echo(f"Sooner is up at http://{host}:{port}  (site {settings.site_dir}; worker '{worker_name}', "
         f"scheduler, web) — Ctrl-C stops everything")
    code = supervisor.run(parts(host, port, worker_name, capacity))
    if settings.mongo_url is None:
        EmbeddedServer(settings.state_dir).stop()
    echo("Sooner stopped.")
    return code
