"""Serve the web app with gunicorn: one worker process, many threads.

Flask-SocketIO's threading mode with simple-websocket runs under gunicorn's
``gthread`` worker; a WebSocket holds one thread for as long as it is open,
so ``threads`` bounds the number of open browser tabs plus concurrent
requests. Socket.IO needs every request of a client to reach the process
that holds its session, and gunicorn cannot route by client, hence exactly
one worker process (run more ``sooner web`` processes behind a proxy with
sticky sessions to scale out; they all read MongoDB).

gunicorn is embedded through its ``BaseApplication``: ``serve()`` runs its
arbiter in the calling (main) thread, which forks the worker; the app and
its database connection are created in the worker, after the fork.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import threading
from typing import TYPE_CHECKING, Any, Callable

from gunicorn.app.base import BaseApplication

from sooner.errors import SoonerError

if TYPE_CHECKING:
    from sooner.config import Settings

logger = logging.getLogger(__name__)

DEFAULT_THREADS = 100


class _Gunicorn(BaseApplication):
    def __init__(self, load_app: Callable[[], Any], options: dict[str, Any]) -> None:
        self._load_app = load_app
        self._options = options
        self.arbiter: Any = None
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        return self._load_app()

    def run(self) -> None:
        from gunicorn.arbiter import Arbiter

        self.arbiter = Arbiter(self)
        self.arbiter.run()


def check_can_listen(host: str, port: int) -> None:
    """Fail with one clear SoonerError unless this process could listen on ``host:port`` now.

    gunicorn, given an address in use, logs an error and retries every second
    for five seconds before giving up; checking first turns that into one line.
    The probe binds as gunicorn does (SO_REUSEADDR: connections of a server that
    just stopped, in TIME_WAIT, do not count) and closes at once.
    """
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        family, kind, proto, _name, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                                 flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise SoonerError(f"cannot listen on {shown} ({exc.strerror}): check web_host") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise SoonerError(f"{shown} is in use ({exc.strerror}): stop the other server or set web_port") from None
            raise SoonerError(f"cannot listen on {shown} ({exc.strerror}): check web_host and web_port") from None


def gunicorn_options(settings: Settings, host: str, port: int, *, threads: int = DEFAULT_THREADS,
                     access_log: bool = False) -> dict[str, Any]:
    level = settings.log_level.lower()
    return {
        "bind": [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"],
        "workers": 1,
        "worker_class": "gthread",
        "threads": threads,
        "timeout": 60,
        "graceful_timeout": 3,  # open WebSockets never finish by themselves; don't wait long for them
        "keepalive": 5,
        "proc_name": "sooner-web",
        "accesslog": "-" if access_log else None,
        "errorlog": "-",
        "loglevel": "info" if level == "debug" else level,
        # X-Forwarded-* are trusted only through web_trusted_proxies (ProxyFix), never implicitly.
        "forwarded_allow_ips": "",
        "control_socket_disable": True,  # else every server writes ~/.gunicorn/gunicorn.ctl
        "preload_app": False,
    }


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
