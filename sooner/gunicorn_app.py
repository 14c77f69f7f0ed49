"""gunicorn embedded through its ``BaseApplication``, without importing the web app.

:mod:`sooner.webapp.server` serves the app with it (``sooner web``) and
:mod:`sooner.site.one_process` too (``sooner up``). It lives outside the
``sooner.webapp`` package so that the gunicorn master of ``sooner up``, which
only binds the port and forks, never imports Flask: the worker process it
forks builds the app.
"""

from __future__ import annotations

import errno
import socket
import sys
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Iterator

from gunicorn.app.base import BaseApplication

from sooner.errors import SoonerError

if TYPE_CHECKING:
    from sooner.config import Settings

DEFAULT_THREADS = 100
# Imported by python-engineio's Client and AsyncClient when engineio is imported (through
# flask_socketio), though the server never uses a client: ~5 MB of RSS in each web process
# (requests alone brings urllib3, idna, charset_normalizer, certifi). bench/footprint.py.
ENGINEIO_CLIENT_ONLY = ("requests", "websocket", "aiohttp")


class Gunicorn(BaseApplication):
    """A gunicorn application whose WSGI app ``load_app()`` builds (in the worker, after the fork)."""

    arbiter_class: Any = None  # default: gunicorn's Arbiter

    def __init__(self, load_app: Callable[[], Any], options: dict[str, Any]) -> None:
        self._load_app = load_app
        self._options = options
        self.arbiter: Any = None
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        # In the worker process, before any of its threads start: nothing else imports meanwhile.
        with without_client_libraries():
            return self._load_app()


@contextmanager
def without_client_libraries(names: tuple[str, ...] = ENGINEIO_CLIENT_ONLY) -> Iterator[None]:
    """Imports inside see ``names`` as not installed (engineio's clients then do without them);
    afterwards they import as usual (apprise, for one, imports requests when a notification is sent).

    Only modules not imported yet are hidden: one already loaded costs nothing more.
    """
    hidden = [name for name in names if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # import raises ImportError
    try:
        yield
    finally:
        for name in hidden:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]

    def run(self) -> None:
        from gunicorn.arbiter import Arbiter

        self.arbiter = (self.arbiter_class or Arbiter)(self)
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
    """gunicorn's settings for Sooner's web server: one worker process, ``threads`` threads."""
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
