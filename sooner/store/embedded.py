"""The embedded default database: an nx-27017 server for one site.

nx-27017 speaks the MongoDB wire protocol over SQLite, so every Sooner process
reaches it with the real PyMongo driver. Data lives in ``<site>/.sooner/db/``;
the running server's port and pid are in ``<site>/.sooner/db.json``. Starting
is guarded by an exclusive lock on ``<site>/.sooner/db.lock`` so two commands
never start two servers, and any command that needs the database starts it
when it is not running (or has died).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from sooner.errors import StoreError

logger = logging.getLogger(__name__)

START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class EmbeddedStatus:
    """What ``sooner db status`` reports."""

    running: bool
    pid: int | None
    port: int | None
    data_dir: Path
    data_bytes: int

    @property
    def url(self) -> str | None:
        return f"mongodb://127.0.0.1:{self.port}" if self.running and self.port else None


class EmbeddedServer:
    """Manage the nx-27017 server of one site (``state_dir`` = ``<site>/.sooner``)."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.data_dir = state_dir / "db"
        self.info_file = state_dir / "db.json"
        self.lock_file = state_dir / "db.lock"
        self.log_file = state_dir / "db.log"
        self.pid_file = state_dir / "db.pid"

    def ensure_running(self) -> str:
        """Return the server's URL, starting it first if it is not answering."""
        url = self._live_url()
        if url:
            return url
        with self._locked():
            # Another process may have started it while we waited for the lock.
            return self._live_url() or self._start()

    def status(self) -> EmbeddedStatus:
        info = self._read_info()
        pid, port = info.get("pid"), info.get("port")
        running = bool(pid and port and _pid_alive(pid) and _answers(port))
        size = sum(p.stat().st_size for p in self.data_dir.glob("*")) if self.data_dir.is_dir() else 0
        return EmbeddedStatus(running, pid if running else None, port if running else None, self.data_dir, size)

    def stop(self) -> bool:
        """Stop the server; returns False if it was not running."""
        with self._locked():
            info = self._read_info()
            pid = info.get("pid")
            self.info_file.unlink(missing_ok=True)
            if not pid or not _pid_alive(pid):
                return False
            os.kill(pid, signal.SIGTERM)
            if not _wait_for(lambda: not _pid_alive(pid), STOP_TIMEOUT_S):
                logger.warning("embedded database pid %s ignored SIGTERM; killing it", pid)
                os.kill(pid, signal.SIGKILL)
            return True

    def _live_url(self) -> str | None:
        info = self._read_info()
        pid, port = info.get("pid"), info.get("port")
        if pid and port and _pid_alive(pid) and _answers(port):
            return f"mongodb://127.0.0.1:{port}"
        return None

    def _start(self) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        late = self._retire_unresponsive(self._read_info())
        if late:
            return late
        # Reuse the last port when it is free, so clients of a server that died
        # reconnect to its replacement without being rebuilt.
        previous = self._read_info().get("port")
        port = previous if isinstance(previous, int) and _port_free(previous) else _free_port()
        command = [
            sys.executable, "-m", "sooner.store.nx_server",
            "--data-dir", str(self.data_dir), "--host", "127.0.0.1", "--port", str(port),
            "--log-file", str(self.log_file), "--pid-file", str(self.pid_file),
        ]
        logger.info("starting embedded database on port %s (%s)", port, self.data_dir)
        with open(self.log_file, "ab") as log:
            # A new session detaches the server from the caller (a git hook, a
            # terminal): it outlives the command that started it, and git does
            # not wait for it because none of the push's pipes are inherited.
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                       start_new_session=True, close_fds=True)
        self._write_info({"pid": process.pid, "port": port, "started_at": time.time()})
        if not _wait_for(lambda: process.poll() is not None or _answers(port), START_TIMEOUT_S) or process.poll() is not None:
            self.info_file.unlink(missing_ok=True)
            if process.poll() is None:
                process.kill()
            raise StoreError(f"the embedded database did not start (see {self.log_file}): {_tail(self.log_file)}")
        return f"mongodb://127.0.0.1:{port}"

    def _retire_unresponsive(self, info: dict) -> str | None:
        """Make way for a new server: kill one that is alive but does not answer, drop its pid file.

        Returns the old server's URL instead if it answers after all (it was only slow).

        nx-27017 refuses to start while its pid file names a live process, and
        a killed server that its parent has not reaped yet still looks alive.
        """
        pid, port = info.get("pid"), info.get("port")
        if pid and _pid_alive(pid):
            if port and _wait_for(lambda: _answers(port), 5.0):
                return f"mongodb://127.0.0.1:{port}"
            logger.warning("embedded database pid %s does not answer; killing it", pid)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _wait_for(lambda: not _pid_alive(pid), STOP_TIMEOUT_S)
        self.pid_file.unlink(missing_ok=True)
        return None

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.lock_file, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _read_info(self) -> dict:
        try:
            info = json.loads(self.info_file.read_text())
            return info if isinstance(info, dict) else {}
        except (OSError, ValueError):
            return {}

    def _write_info(self, info: dict) -> None:
        tmp = self.info_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(info))
        tmp.replace(self.info_file)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped by its parent) is not alive
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][:1] != "Z"
    except OSError:
        return True


def _answers(port: int) -> bool:
    """True if a MongoDB-protocol server answers ``ping`` on the port."""
    from pymongo import MongoClient
    from pymongo.errors import PyMongoError

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            pass
    except OSError:
        return False
    client: MongoClient = MongoClient(f"mongodb://127.0.0.1:{port}", serverSelectionTimeoutMS=1500,
                                      connectTimeoutMS=1500, directConnection=True)
    try:
        client.admin.command("ping")
        return True
    except PyMongoError:
        return False
    finally:
        client.close()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # The server binds with SO_REUSEADDR (asyncio's default), so a port
        # whose old connections linger in TIME_WAIT is free for it.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _wait_for(condition, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    delay = 0.01
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(delay)
        delay = min(delay * 2, 0.2)
    return bool(condition())


def _tail(path: Path, lines: int = 3) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "no log"
