"""The embedded default database: an nx-27017 server for one site.

nx-27017 speaks the MongoDB wire protocol over SQLite, so every Sooner process
reaches it with the real PyMongo driver. Data lives in ``<site>/.sooner/db/``;
the running server's record (pid, port, start time, data directory and a
random instance token that is also on its command line) is in
``<site>/.sooner/db.json``. Starting is guarded by an exclusive lock on
``<site>/.sooner/db.lock`` so two commands never start two servers, and any
command that needs the database starts it when it is not running (or has
died).

A record is only a claim: before using or signalling a process, it must be
alive, its command line must be ``… -m sooner.store.nx_server`` with this
data directory and the recorded token, and its start time must match the
record. Anything else is a stale record, reported in one line and never
signalled. The server itself holds a lock on ``<data dir>/.lock`` for its
life (:mod:`sooner.store.nx_server`), so two servers can never open one data
directory even when ``db.json`` is corrupt or lost; the holder's record in
that lock file is how such a server is found again.

A server started on demand (:meth:`EmbeddedServer.ensure_running`) stops
itself once no client has been connected for ``idle_stop_s`` (the
``embedded_idle_stop_s`` setting), so a one-shot command leaves nothing
running for long. ``ensure_running(keep=True)`` (``sooner up``, ``sooner db
start``) writes the server's instance token into ``<site>/.sooner/db.keep``,
which the server reads before stopping: that one runs until ``sooner db
stop``. The token ties the request to one server: a keep file left behind
(say by a killed ``sooner up``) keeps no later server alive.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence, TypeGuard

import psutil

from sooner.errors import StoreError

logger = logging.getLogger(__name__)

SERVER_MODULE = "sooner.store.nx_server"
LOCK_NAME = ".lock"  # in the data directory, held by the server for its whole life
EXIT_DATA_DIR_IN_USE = 3  # the server's exit code when another server holds the data directory
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
SLOW_ANSWER_S = 5.0  # how long a live server that does not answer ping gets before it is replaced
# Start times are compared as seconds since boot (jiffies, 1/100 s): a wall-clock
# step (NTP, a restored VM) moves psutil's epoch-based create_time but not this.
START_TIME_SLACK_S = 0.05
DEFAULT_IDLE_STOP_S = 600.0  # the embedded_idle_stop_s default


@dataclass(frozen=True)
class EmbeddedStatus:
    """What ``sooner db status`` reports."""

    running: bool
    pid: int | None
    port: int | None
    data_dir: Path
    data_bytes: int
    kept: bool = False  # asked to keep running (`sooner up`, `sooner db start`)
    idle_stop_s: float | None = None  # an on-demand server's idle limit (None: never stops by itself)

    @property
    def url(self) -> str | None:
        return f"mongodb://127.0.0.1:{self.port}" if self.running and self.port else None


@dataclass(frozen=True)
class ServerRecord:
    """A server as ``db.json`` (or the data directory's lock file) records it."""

    pid: int
    port: int
    instance: str | None = None
    data_dir: str | None = None
    create_time: float | None = None  # psutil's, seconds since the epoch
    boot_time: float | None = None  # psutil's at the same moment: create_time - boot_time is clock-proof

    @classmethod
    def parse(cls, data: object) -> ServerRecord:
        """Read a record; ValueError says what is wrong (never a pid that could mean a group or everyone)."""
        if not isinstance(data, dict):
            raise ValueError("it is not a JSON object")
        pid, port = data.get("pid"), data.get("port")
        if not _is_int(pid) or pid <= 0:
            raise ValueError(f"its 'pid' is {pid!r}, not a process id")
        if not _is_int(port) or not 0 < port < 65536:
            raise ValueError(f"its 'port' is {port!r}, not a port number")
        instance, data_dir = data.get("instance"), data.get("data_dir")
        create_time, boot_time = data.get("create_time"), data.get("boot_time")
        return cls(pid, port, instance if isinstance(instance, str) else None,
                   data_dir if isinstance(data_dir, str) else None,
                   float(create_time) if _is_number(create_time) else None,
                   float(boot_time) if _is_number(boot_time) else None)

    @classmethod
    def of_process(cls, pid: int, port: int, instance: str, data_dir: str) -> ServerRecord:
        """The record of a server just started (raises psutil.Error if it is gone already)."""
        process = psutil.Process(pid)
        return cls(pid, port, instance, data_dir, process.create_time(), psutil.boot_time())

    @property
    def url(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}"


def is_server_command(cmdline: Sequence[str], data_dir: str, instance: str | None) -> bool:
    """True if ``cmdline`` is ``<python> -m sooner.store.nx_server`` for ``data_dir`` with token ``instance``."""
    args = list(cmdline)
    if not instance or args[1:3] != ["-m", SERVER_MODULE]:
        return False
    return _option(args[3:], "--data-dir") == data_dir and _option(args[3:], "--instance") == instance


def server_command(data_dir: str, port: int, instance: str, log_file: Path, pid_file: Path,
                   idle_stop_s: float = 0.0, keep_file: Path | None = None) -> list[str]:
    """The command line of the server process (what :func:`is_server_command` recognises)."""
    idle = ["--idle-stop-s", f"{idle_stop_s:g}"] + (["--keep-file", str(keep_file)] if keep_file else [])
    return [sys.executable, "-m", SERVER_MODULE, "--instance", instance, "--data-dir", data_dir, *idle,
            "--host", "127.0.0.1", "--port", str(port), "--log-file", str(log_file), "--pid-file", str(pid_file), *(["--asyncio"] if os.environ.get("NXA") else [])]


@dataclass(frozen=True)
class _Live:
    """A verified server: its record and its process (psutil refuses to signal a reused pid)."""

    record: ServerRecord
    process: psutil.Process


class EmbeddedServer:
    """Manage the nx-27017 server of one site (``state_dir`` = ``<site>/.sooner``).

    ``idle_stop_s`` is how long a server this starts on demand runs without
    any client before it stops itself (0: never).
    """

    def __init__(self, state_dir: Path, idle_stop_s: float = DEFAULT_IDLE_STOP_S) -> None:
        self.state_dir = state_dir
        self.idle_stop_s = idle_stop_s
        self.keep_file = state_dir / "db.keep"
        self.data_dir = state_dir / "db"
        self.info_file = state_dir / "db.json"
        self.lock_file = state_dir / "db.lock"
        self.log_file = state_dir / "db.log"
        self.pid_file = state_dir / "db.pid"
        self.port_file = state_dir / "db.port"  # the port servers of this site use, kept across restarts
        self.data_lock_file = self.data_dir / LOCK_NAME
        self._data_arg = os.path.realpath(self.data_dir)  # exactly what the server's command line carries
        self._reported: set[str] = set()

    def ensure_running(self, *, keep: bool = False) -> str:
        """Return the server's URL, starting it first if it is not answering.

        With ``keep``, the server (found or started) no longer stops when idle.
        """
        live = self._find()
        if live and not keep and _answers(live.record.port):
            return live.record.url
        with self._locked():
            # Another process may have started it while we waited for the lock.
            record = self._adopt_or_start()
            if keep:
                self._write_private(self.keep_file, record.instance or "")
            return record.url

    def status(self) -> EmbeddedStatus:
        live = self._find()
        running = live is not None and _answers(live.record.port)
        size = sum(p.stat().st_size for p in self.data_dir.glob("*")) if self.data_dir.is_dir() else 0
        if live is None or not running:
            return EmbeddedStatus(False, None, None, self.data_dir, size)
        kept = self._kept(live.record)
        idle = _idle_stop_of(live.process)
        return EmbeddedStatus(True, live.record.pid, live.record.port, self.data_dir, size, kept,
                              idle if idle and not kept else None)

    def stop(self, say: Callable[[str], None] | None = None) -> bool:
        """Stop the server; returns False if none was running (a stale record is dropped, never signalled).

        SIGTERM, then SIGKILL after :data:`STOP_TIMEOUT_S` (the server itself
        exits within ``nx_server.STOP_BOUND_S``, whatever is in flight).
        ``say`` gets a line for each step (``sooner db stop``).
        """
        with self._locked():
            live = self._find()
            self.info_file.unlink(missing_ok=True)
            self.keep_file.unlink(missing_ok=True)
            if live is None:
                return False
            if say:
                say(f"sending SIGTERM to the embedded database (pid {live.record.pid}); "
                    f"waiting up to {STOP_TIMEOUT_S:g} s for it to exit")
            _signal(live.process, "terminate")
            if not _wait_for(lambda: _gone(live.process), STOP_TIMEOUT_S):
                logger.warning("embedded database pid %s ignored SIGTERM; killing it", live.record.pid)
                if say:
                    say(f"pid {live.record.pid} did not exit in {STOP_TIMEOUT_S:g} s; killed it (SIGKILL)")
                _signal(live.process, "kill")
                _wait_for(lambda: _gone(live.process), STOP_TIMEOUT_S)
            return True

    def _adopt_or_start(self) -> ServerRecord:
        """Under the start lock: use the verified server if it answers (it may only be slow), else replace it."""
        live = self._find()
        if live is not None:
            if _wait_for(lambda: _answers(live.record.port), SLOW_ANSWER_S):
                if self._recorded() != live.record:
                    self._write_info(live.record)  # found through the data directory's lock: record it again
                return live.record
            logger.warning("embedded database pid %s does not answer; killing it", live.record.pid)
            _signal(live.process, "kill")
            # Its data-directory lock goes when it is gone (a zombie holds no files).
            _wait_for(lambda: _gone(live.process), STOP_TIMEOUT_S)
        return self._start()

    def _find(self) -> _Live | None:
        """The live server of this data directory: the one ``db.json`` names, else the lock holder; verified."""
        recorded = self._recorded()
        if recorded is not None:
            process = self._verified(recorded, report=True)
            if process is not None:
                return _Live(recorded, process)
        holder = self._lock_holder()
        if holder is not None and holder != recorded:
            process = self._verified(holder, report=False)
            if process is not None:
                return _Live(holder, process)
        return None

    def _verified(self, record: ServerRecord, *, report: bool) -> psutil.Process | None:
        process, why = _verify(record, self._data_arg)
        if process is None and report:
            if why == _NOT_RUNNING:
                logger.info("%s names pid %s, which is not running: a stale record", self.info_file, record.pid)
            else:
                self._report(f"ignoring {self.info_file}: pid {record.pid} is not this site's embedded database "
                             f"({why}); it is not signalled")
        return process

    def _start(self) -> ServerRecord:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # nx-27017 refuses to start while its pid file names any live process; the
        # data-directory lock, not this file, is what keeps a second server out.
        self.pid_file.unlink(missing_ok=True)
        self.keep_file.unlink(missing_ok=True)  # it named the server this one replaces
        port = self._next_port()
        instance = secrets.token_hex(16)
        command = server_command(self._data_arg, port, instance, self.log_file, self.pid_file,
                                 self.idle_stop_s, self.keep_file)
        logger.info("starting embedded database on port %s (%s)", port, self.data_dir)
        with open(self.log_file, "ab") as log:
            # A new session detaches the server from the caller (a git hook, a
            # terminal): it outlives the command that started it, and git does
            # not wait for it because none of the push's pipes are inherited.
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                       start_new_session=True, close_fds=True)
        record = ServerRecord(process.pid, port, instance, self._data_arg)
        try:
            record = ServerRecord.of_process(process.pid, port, instance, self._data_arg)
            self._write_info(record)
        except psutil.Error:
            pass  # it died at once; the wait below reports it
        if not _wait_for(lambda: process.poll() is not None or _answers(port), START_TIMEOUT_S) or process.poll() is not None:
            self.info_file.unlink(missing_ok=True)
            if process.poll() is None:
                process.kill()
            process.wait()
            raise StoreError(f"the embedded database did not start (see {self.log_file}): {_tail(self.log_file)}")
        return record

    def _next_port(self) -> int:
        # Reuse the last port when it is free, so clients of a server that died (a worker, the
        # scheduler: their client cannot move to another port) reconnect to its replacement.
        # ``db.port`` remembers it even when a failed start or a stale record dropped db.json.
        previous = self._recorded(quiet=True)
        port = previous.port if previous else None
        try:
            port = int(self.port_file.read_text())
        except (OSError, ValueError):
            pass
        # A server killed this instant leaves its port in use for a moment while the kernel closes it.
        if port is None or not 1024 <= port <= 65535:
            port = _free_port()
        else:
            last = port
            port = last if _wait_for(lambda: _port_free(last), PORT_FREE_S) else _free_port()
        self.port_file.write_text(f"{port}\n")
        return port

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.lock_file, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _recorded(self, *, quiet: bool = False) -> ServerRecord | None:
        """The record in ``db.json``; a missing file is None, a corrupt one is reported and None."""
        try:
            text = self.info_file.read_text()
        except FileNotFoundError:
            return None
        except OSError as exc:
            problem = f"it cannot be read ({exc.strerror})"
        else:
            try:
                return ServerRecord.parse(json.loads(text))
            except ValueError as exc:  # JSONDecodeError is one
                problem = str(exc) if not isinstance(exc, json.JSONDecodeError) else f"it is not valid JSON ({exc})"
        if not quiet:
            self._report(f"ignoring {self.info_file}: {problem}; treating it as no server recorded")
        return None

    def _lock_holder(self) -> ServerRecord | None:
        """The record the server holding the data directory wrote into its lock file (unverified)."""
        try:
            return ServerRecord.parse(json.loads(self.data_lock_file.read_text()))
        except (OSError, ValueError):
            return None

    def _kept(self, record: ServerRecord) -> bool:
        try:
            return bool(record.instance) and self.keep_file.read_text().strip() == record.instance
        except OSError:
            return False

    def _write_private(self, path: Path, text: str) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)

    def _write_info(self, record: ServerRecord) -> None:
        tmp = self.info_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(record)))
        tmp.replace(self.info_file)

    def _report(self, message: str) -> None:
        """Warn once per message and server object (a command looks twice: before and under the lock)."""
        if message not in self._reported:
            self._reported.add(message)
            logger.warning("%s", message)


_NOT_RUNNING = "it is not running"


def _verify(record: ServerRecord, data_dir: str) -> tuple[psutil.Process | None, str]:
    """The process ``record`` names if it is provably this data directory's server, else (None, why not)."""
    try:
        process = psutil.Process(record.pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None, _NOT_RUNNING
        cmdline = process.cmdline()
        since_boot = process.create_time() - psutil.boot_time()
    except psutil.NoSuchProcess:
        return None, _NOT_RUNNING
    except psutil.AccessDenied:
        return None, "it belongs to another user"
    if not is_server_command(cmdline, data_dir, record.instance):
        shown = " ".join(cmdline)
        return None, f"its command line is {shown[:80]!r}" if shown else "it has no command line"
    if record.create_time is None or record.boot_time is None:
        return None, "the record has no start time"
    if abs(since_boot - (record.create_time - record.boot_time)) > START_TIME_SLACK_S:
        return None, "it started at another time than recorded"
    return process, ""


def _signal(process: psutil.Process, how: str) -> None:
    """``terminate`` or ``kill`` a verified server; psutil itself refuses if the pid was reused since."""
    if process.pid <= 1 or process.pid == os.getpid():  # never init, never ourselves, whatever a record says
        raise StoreError(f"refusing to signal pid {process.pid}")
    try:
        getattr(process, how)()
    except psutil.NoSuchProcess:
        pass


def _gone(process: psutil.Process) -> bool:
    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _idle_stop_of(process: psutil.Process) -> float | None:
    """The ``--idle-stop-s`` a verified server was started with (None if none or unreadable)."""
    try:
        value = _option(process.cmdline()[3:], "--idle-stop-s")
        return float(value) if value is not None else None
    except (psutil.Error, ValueError):
        return None


def _option(args: list[str], name: str) -> str | None:
    try:
        return args[args.index(name) + 1]
    except (ValueError, IndexError):
        return None


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


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


PORT_FREE_S = 2.0  # how long a restart waits for the last server's port before it takes another


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


def _wait_for(condition: Callable[[], bool], timeout_s: float) -> bool:
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
