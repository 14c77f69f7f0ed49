"""The doorbell: queueing a run wakes idle workers of the same database at once, in this process and on this host.

A worker looks for queued runs every ``POLL_S`` (25 ms) when idle, so a run
waited half of that on average before a worker even saw it. Queueing a run
(from the UI, the APIs, webhooks, signed URLs, events, cron ticks, `sooner
run`) rings:

- the idle workers of this process (:func:`listen`): under ``sooner up`` the
  web server, the scheduler and the local worker share one process;
- the workers of other processes on this host that use the same database
  (:class:`HostBell`): each has a unix datagram socket in a directory named
  after the database (its URL and name, hashed), under the temp directory
  in ``sooner-bell-<uid>`` (0700; sockets 0600). A ring sends one byte,
  without blocking, to as many of those sockets as runs were queued, picked
  at random: waking every worker for one run would have all but one look in
  vain (three commands each: a query, a lost claim, a second query), and a
  worker that was not rung still finds its runs by polling.

Workers on other hosts still find runs by polling. A ring only wakes a worker
to look: its content is ignored, claiming stays the atomic update it always
was, and a ring that finds nothing costs one query. Ringing never fails the
queueing: a socket nobody listens on any more (its worker was killed) is
removed by the next ring, a full one already has a wake-up pending, and a
directory that is not this user's alone (a symlink, another owner, group or
world access) is never used.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import secrets
import socket
import stat
import tempfile
import threading
import weakref
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sooner.store import Store

logger = logging.getLogger(__name__)

BELL_DIR_PREFIX = "sooner-bell-"
SUFFIX = ".sock"

_listeners: weakref.WeakSet[threading.Event] = weakref.WeakSet()
_lock = threading.Lock()
_sender: socket.socket | None = None


def listen(event: threading.Event) -> None:
    """Set ``event`` whenever this process queues a run (held weakly: a dropped event stops listening)."""
    with _lock:
        _listeners.add(event)


def ring(store: Store | None = None, runs: int = 1) -> None:
    """``runs`` runs were queued: wake this process's listeners and, given the ``store``, as many of this
    host's other workers of its database."""
    with _lock:
        events = list(_listeners)
    for event in events:
        event.set()
    if store is not None and not store.is_mongomock:  # no other process shares an in-memory database
        ring_host(directory_for(store), runs)


def directory_for(store: Store, parent: str | None = None) -> Path:
    """The directory of the bells of ``store``'s database on this host."""
    key = hashlib.sha256(f"{store.url}\0{store.database_name}".encode()).hexdigest()[:16]
    return Path(parent or tempfile.gettempdir()) / f"{BELL_DIR_PREFIX}{os.geteuid()}" / key


def ring_host(directory: Path, count: int | None = None) -> int:
    """Wake ``count`` bells in ``directory`` (random ones; None: all) but this process's own; how many were rung.

    A bell that refuses (its worker is gone) is removed, and another is tried in its place.
    """
    if not _private(directory.parent) or not _private(directory):
        return 0
    try:
        names = [n for n in os.listdir(directory) if n.endswith(SUFFIX)]
    except OSError:
        return 0
    own = f"{os.getpid()}-"
    others = [name for name in names if not name.startswith(own)]  # this process's heard the in-process ring
    random.shuffle(others)
    rung = 0
    for name in others:
        if count is not None and rung >= count:
            break
        path = str(directory / name)
        try:
            _send(path)
            rung += 1
        except ConnectionRefusedError:
            _remove_stale(path)
        except OSError:
            pass  # full (a wake-up is pending), gone meanwhile, or not a socket: nothing to do
    return rung


def _send(path: str) -> None:
    global _sender
    with _lock:
        if _sender is None:
            _sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            _sender.setblocking(False)
        _sender.sendto(b"r", path)


def _remove_stale(path: str) -> None:
    # Refused: no socket is bound to the path any more (its process died). Only our own sockets go.
    try:
        info = os.lstat(path)
        if stat.S_ISSOCK(info.st_mode) and info.st_uid == os.geteuid():
            os.unlink(path)
    except OSError:
        pass


def _private(directory: Path) -> bool:
    """Whether ``directory`` is a real directory of this user's that nobody else may enter."""
    try:
        info = os.lstat(directory)
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid() and not info.st_mode & 0o077


def _make_private(directory: Path) -> bool:
    for folder in (directory.parent, directory):
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:
            pass
        except OSError as exc:
            logger.debug("no doorbell in %s: %s", folder, exc)
            return False
        if not _private(folder):
            logger.warning("not using %s for the doorbell: it is not a directory only this user may enter", folder)
            return False
    return True


class HostBell:
    """A worker's bell: a datagram socket that sets ``event`` when another process on this host rings.

    :meth:`open` gives None where there can be none (no private directory, no unix sockets); the
    worker then only polls. :meth:`close` removes the socket.
    """

    def __init__(self, sock: socket.socket, path: Path, event: threading.Event) -> None:
        self.path = path
        self._socket = sock
        self._event = event
        self._closed = False
        self._thread = threading.Thread(target=self._listen, name="sooner-doorbell", daemon=True)
        self._thread.start()

    @classmethod
    def open(cls, store: Store, event: threading.Event, parent: str | None = None) -> HostBell | None:
        if store.is_mongomock:
            return None
        directory = directory_for(store, parent)
        for _ in range(2):  # once more if the last worker of the database removed the directory meanwhile
            if not _make_private(directory):
                return None
            ring_host(directory)  # all: clears sockets that killed workers left (the live ones look once)
            path = directory / f"{os.getpid()}-{secrets.token_hex(4)}{SUFFIX}"
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            try:
                sock.bind(str(path))
                os.chmod(path, 0o600)
            except FileNotFoundError:
                sock.close()
                continue
            except OSError as exc:  # e.g. a path longer than unix sockets allow
                sock.close()
                logger.debug("no doorbell at %s: %s", path, exc)
                return None
            return cls(sock, path, event)
        return None

    def _listen(self) -> None:
        while True:
            try:
                self._socket.recv(64)
            except OSError:
                return
            if self._closed:
                return
            self._event.set()

    def close(self) -> None:
        """Stop listening and remove the socket (and its directory, if no other bell is left in it)."""
        if self._closed:
            return
        self._closed = True
        try:
            self.path.unlink()
        except OSError:
            pass
        try:
            self._socket.shutdown(socket.SHUT_RDWR)  # wakes the listening thread's recv
        except OSError:
            pass
        self._thread.join(5)
        self._socket.close()
        try:
            self.path.parent.rmdir()  # the database's last bell on this host: leave no empty folder behind
        except OSError:
            pass
