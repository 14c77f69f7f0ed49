"""``sooner up`` in one web process: gunicorn's master, and one worker process that also schedules and runs jobs.

Measured (bench/footprint.py, issue #12): six interpreters (``up``, gunicorn
master and worker, scheduler, worker, plus the launcher) each paid ~40 MB of
interpreter and imports. Now ``sooner up`` itself is the gunicorn master (it
binds the port, forks and supervises; it never imports Flask or PyMongo), and
its one worker process serves the web app *and* runs the scheduler (with its
notifier) and the local worker as threads (:class:`Parts`), each part with a
store of its own as when it runs as its own command. The embedded database
stays a process of its own, and so do the worker's launcher and per-run
supervisors (scripts die with their worker).

Stopping: the master maps SIGINT to SIGTERM (gunicorn's SIGINT would be its
"quick" shutdown, which kills the worker process after 0.1 s), so Ctrl-C and
SIGTERM both stop gracefully. The worker process stops its parts as soon as
the signal arrives, while the web server drains its connections (at most
:data:`WEB_DRAIN_S`), then waits for them in gunicorn's ``worker_exit`` hook.
The master waits ``shutdown_grace_s + cancel_grace_s`` plus a margin before
it kills the worker process. A second Ctrl-C (SIGINT, which a terminal sends
to the worker process too) cancels running runs at once, as for ``sooner
worker``. A part that stops by itself (its worker
name taken, a crash) stops everything, and ``sooner up`` exits with 1.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from sooner.errors import SoonerError
from sooner.gunicorn_app import Gunicorn, gunicorn_options

if TYPE_CHECKING:
    from sooner.config import Settings

logger = logging.getLogger(__name__)

WEB_DRAIN_S = 3  # what `sooner web` gives open connections (WebSockets never end by themselves)
KILL_MARGIN_S = 10  # beyond the worker's grace, before the master kills the worker process
EXIT_BOOT_FAILED = 3  # gunicorn's WORKER_BOOT_ERROR: the master gives up instead of forking again


class Parts:
    """The scheduler (and its notifier) and the local worker, as threads of the web worker process."""

    def __init__(self, settings: Settings, worker_name: str, capacity: int | None,
                 echo: Callable[[str], None], on_failure: Callable[[], None]) -> None:
        self.settings = settings
        self.worker_name = worker_name
        self.capacity = capacity
        self.echo = echo
        self.on_failure = on_failure
        self.stop_event, self.hurry_event = threading.Event(), threading.Event()
        self.failed: str | None = None
        self.pid: int | None = None  # the process the parts run in (hooks also run in the master)
        self.threads: list[threading.Thread] = []
        self._closers: list[Callable[[], None]] = []
        self._worker: Any = None

    def start(self) -> None:
        """Open a store per part, register the worker and start the threads."""
        from sooner.runs.notifier import start_notifier
        from sooner.runs.service import RunService
        from sooner.scheduling.scheduler import Scheduler
        from sooner.store import open_store
        from sooner.worker.loop import Worker

        self.pid = os.getpid()
        worker_store = open_store(self.settings)
        self._closers.append(worker_store.close)
        worker = Worker(worker_store, self.settings, self.worker_name, self.capacity,
                        service=RunService(worker_store, self.settings))
        worker.register()
        self._worker = worker
        scheduler_store = open_store(self.settings)
        self._closers.append(scheduler_store.close)
        scheduler = Scheduler(scheduler_store, self.settings, service=RunService(scheduler_store, self.settings))
        self._closers.insert(0, start_notifier(scheduler_store, self.settings))
        self._spawn("scheduler", lambda: scheduler.run_forever(self.stop_event))
        self._spawn("worker", lambda: self._run_worker(worker))
        tags = ", ".join(worker.tags) or "none"
        self.echo(f"worker {worker.name} ready (capacity {worker.capacity}, tags {tags}); "
                  f"scheduler ready (database {scheduler_store.database_name})")

    def _run_worker(self, worker: Any) -> None:
        worker.run_forever(self.stop_event, self.hurry_event)
        if worker.lost_name:
            self.echo(f"worker {worker.name}: another process took this name; stopped")
        else:
            self.echo(f"worker {worker.name} stopped")

    def _spawn(self, name: str, body: Callable[[], None]) -> None:
        def run() -> None:
            try:
                body()
            except Exception:  # noqa: BLE001 - reported, then everything stops
                logger.exception("sooner up: the %s failed", name)
            if not self.stop_event.is_set():  # it ended by itself
                self.failed = name
                self.echo(f"sooner up: the {name} stopped; stopping the rest")
                self.request_stop()
                self.on_failure()

        thread = threading.Thread(target=run, name=f"sooner-up-{name}")
        thread.start()
        self.threads.append(thread)

    def request_stop(self, *, hurry: bool = False) -> None:
        """Stop claiming and ticking (runs get the grace period); ``hurry`` cancels running runs now."""
        self.stop_event.set()
        if hurry:
            self.hurry_event.set()
        if self._worker is not None:
            self._worker.finished.set()  # wakes its loop

    def join(self, timeout_s: float) -> None:
        """Wait for the threads (in the process that started them), then close the stores."""
        if self.pid != os.getpid():
            return
        self.request_stop()
        deadline = time.monotonic() + timeout_s
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                logger.error("sooner up: %s did not stop in %g s", thread.name, timeout_s)
        for close in self._closers:
            try:
                close()
            except Exception:  # noqa: BLE001 - closing at exit; the rest still closes
                logger.exception("sooner up: closing failed")


class _UpArbiterMixin:
    """Ctrl-C stops gracefully: SIGINT is queued as SIGTERM (gunicorn's SIGINT kills workers at once)."""

    def signal(self, sig: int, frame: Any) -> None:
        super().signal(signal.SIGTERM if sig == signal.SIGINT else sig, frame)  # type: ignore[misc]


def _arbiter_class() -> type:
    from gunicorn.arbiter import Arbiter

    return type("UpArbiter", (_UpArbiterMixin, Arbiter), {})


def serve_up(settings: Settings, host: str, port: int, worker_name: str, capacity: int | None,
             load_app: Callable[[], Any], echo: Callable[[str], None] = print) -> int:
    """Run gunicorn with the parts in its worker until stopped; returns the exit code (0, or 1 if anything failed).

    ``load_app`` builds the WSGI app in the worker process (it may start the
    database first); a :class:`SoonerError` from it or from starting the
    parts is one line, and the master gives up instead of forking again.
    """
    failure_read, failure_write = os.pipe()
    os.set_blocking(failure_read, False)

    def on_failure() -> None:
        os.write(failure_write, b"x")
        os.kill(os.getppid(), signal.SIGTERM)  # the master stops everything

    parts = Parts(settings, worker_name, capacity, echo, on_failure)
    grace_s = settings.shutdown_grace_s + settings.cancel_grace_s

    def boot(step: Callable[[], Any]) -> Any:
        try:
            return step()
        except SoonerError as exc:
            echo(f"sooner up: error: {exc}")
            os.write(failure_write, b"x")
            sys.exit(EXIT_BOOT_FAILED)

    def post_worker_init(worker: Any) -> None:
        worker.cfg.set("graceful_timeout", WEB_DRAIN_S)  # this process's copy; the master keeps the long one
        boot(parts.start)
        interrupted = threading.Event()

        def on_signal(signum: int, frame: Any) -> None:
            # A terminal's Ctrl-C reaches this process and the master (which then sends SIGTERM):
            # only a second SIGINT hurries.
            hurry = signum == signal.SIGINT and interrupted.is_set()
            if signum == signal.SIGINT:
                interrupted.set()
            parts.request_stop(hurry=hurry)
            worker.handle_exit(signum, frame)
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        signal.siginterrupt(signal.SIGTERM, False)
        echo(f"Sooner is up at http://{host}:{port}  (site {settings.site_dir}; worker '{worker_name}', "
             f"scheduler, web in pid {os.getpid()}) — Ctrl-C stops everything")

    def worker_exit(server: Any, worker: Any) -> None:
        parts.join(grace_s + KILL_MARGIN_S / 2)

    options = gunicorn_options(settings, host, port)
    options.update({
        "proc_name": "sooner-up",
        "graceful_timeout": math.ceil(grace_s) + WEB_DRAIN_S + KILL_MARGIN_S,  # gunicorn wants whole seconds
        "post_worker_init": post_worker_init,
        "worker_exit": worker_exit,
    })
    server = Gunicorn(lambda: boot(load_app), options)
    server.arbiter_class = _arbiter_class()
    master = os.getpid()
    code = 0
    try:
        server.run()
    except SystemExit as exit_:
        if os.getpid() != master:
            raise  # the worker process ends here; it must never run the caller's code
        code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        if os.getpid() == master:
            os.close(failure_write)
    try:
        failed = bool(os.read(failure_read, 1))
    except BlockingIOError:
        failed = False
    os.close(failure_read)
    return 1 if failed or code else 0
