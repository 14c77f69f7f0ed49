"""Serve the web app with gunicorn: one worker process, many threads.

Flask-SocketIO's threading mode with simple-websocket runs under gunicorn's
``gthread`` worker; a WebSocket holds one thread for as long as it is open,
so ``threads`` bounds the number of open browser tabs plus concurrent
requests. Socket.IO needs every request of a client to reach the process
that holds its session, and gunicorn cannot route by client, hence exactly
one worker process (run more ``sooner web`` processes behind a proxy with
sticky sessions to scale out; they all read MongoDB).

gunicorn is embedded through its ``BaseApplication`` (:mod:`sooner.gunicorn_app`): ``serve()`` runs its
arbiter in the calling (main) thread, which forks the worker; the app and
its database connection are created in the worker, after the fork.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import TYPE_CHECKING, Any, Callable

# Re-exported: `sooner web` and the tests import them from here.
from sooner.gunicorn_app import DEFAULT_THREADS, check_can_listen, gunicorn_options
from sooner.gunicorn_app import Gunicorn as _Gunicorn

if TYPE_CHECKING:
    from sooner.config import Settings

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_THREADS", "check_can_listen", "gunicorn_options", "serve"]


def serve(settings: Settings, host: str | None = None, port: int | None = None, stop_event: Any = None, *,
          threads: int = DEFAULT_THREADS, trusted_proxies: int | None = None, access_log: bool = False,
          on_ready: Callable[[], None] | None = None) -> None:
    """Serve the web UI until SIGTERM/SIGINT, or until ``stop_event`` (threading or multiprocessing Event) is set.

    Blocks; call it from the **main thread** of its process (gunicorn's
    arbiter installs signal handlers). It forks one worker process that
    builds the app with :func:`create_app` and opens its own store.
    ``on_ready`` runs in the worker once the app is built. An address that
    is taken is a SoonerError before anything starts
    (:func:`check_can_listen`).
    """
    from sooner.webapp import create_app

    host = host or settings.web_host
    port = port or settings.web_port
    check_can_listen(host, port)

    def load_app() -> Any:
        app, _socketio = create_app(settings, trusted_proxies=trusted_proxies)
        _warm(app)
        if on_ready:
            on_ready()
        return app

    server = _Gunicorn(load_app, gunicorn_options(settings, host, port, threads=threads, access_log=access_log))
    if stop_event is not None:
        threading.Thread(target=_stop_when_set, args=(server, stop_event), name="sooner-web-stop",
                         daemon=True).start()
    master = os.getpid()
    try:
        server.run()
    except SystemExit as exit_:
        # gunicorn ends both its arbiter and the forked worker with sys.exit(); only the
        # arbiter may return to the caller, a worker must never run the caller's code.
        if os.getpid() != master or exit_.code not in (0, None):
            raise


def _stop_when_set(server: _Gunicorn, stop_event: Any) -> None:
    import signal

    stop_event.wait()
    # The arbiter's own signal handler only queues the signal; do the same from here.
    while server.arbiter is None:
        threading.Event().wait(0.05)
    server.arbiter.signal(signal.SIGTERM, None)


def _warm(app: Any) -> None:
    """Fill the jobs-page caches in the background, so the first page view is fast."""
    from sooner.webapp.context import EXTENSION

    state = app.extensions[EXTENSION]

    def warm() -> None:
        try:
            state.stats.warm(job.name for job in state.store.jobs.list())
        except Exception:  # a cold cache only makes the first page slower
            logger.exception("could not warm the run statistics")
    threading.Thread(target=warm, name="sooner-web-warm", daemon=True).start()
