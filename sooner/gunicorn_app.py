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
from typing import TYPE_CHECKING, Any, Callable

from gunicorn.app.base import BaseApplication

from sooner.errors import SoonerError

if TYPE_CHECKING:
    from sooner.config import Settings

DEFAULT_THREADS = 100


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
        return self._load_app()

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
