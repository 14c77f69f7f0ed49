"""What every fault trial shares: the tally it fills, a lab of real processes and temporary files, deadlines.

A trial is ``trial(lab, tally, index)``: it sets up what it needs through the
:class:`Lab` (a fresh database on the bench's embedded server, ``sooner``
daemons and one-shot commands as real processes), injects its fault, and adds
to the :class:`Tally` what went wrong, each count with a note saying what. The
lab then stops every process it started and counts a daemon that died on its
own, left a traceback in its log, or did not stop cleanly as a crash.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psutil

from sooner.model import FINISHED, ManualTrigger, Run
from sooner.runs.service import RunService
from sooner.store import Store

PY = "#!" + sys.executable + "\n"
T = TypeVar("T")

# Short times, as tests/test_outage.py's SETTINGS_ENV, so a lease runs out in 2 s and a kill follows
# SIGTERM after 1 s. The outage grace is short too (a lost run's retry waits it out), except in the
# outage faults, which set it long enough to outlast their outage.
DAEMON_ENV = {"SOONER_HEARTBEAT_S": "0.2", "SOONER_LEASE_S": "2", "SOONER_CANCEL_GRACE_S": "1",
              "SOONER_SHUTDOWN_GRACE_S": "1", "SOONER_OUTPUT_FLUSH_MS": "50", "SOONER_OUTAGE_GRACE_S": "3"}
STOP_TIMEOUT_S = 30.0


class Deadline(Exception):
    """A condition a trial waited for did not come true in time."""


def wait_for(condition: Callable[[], T | None], timeout: float, message: str, interval: float = 0.02) -> T:
    """Poll ``condition`` until it returns something truthy; :class:`Deadline` once ``timeout`` seconds passed."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise Deadline(f"timed out after {timeout:g}s waiting for {message}")
        time.sleep(interval)


def eventually(condition: Callable[[], object], timeout: float, interval: float = 0.02) -> bool:
    """Like :func:`wait_for`, but says whether it came true instead of raising."""
    try:
        wait_for(condition, timeout, "", interval)
        return True
    except Deadline:
        return False


KINDS = ("lost", "doubled", "lines_lost", "crashes")


@dataclass
class Tally:
    """What went wrong in one trial: four counts, and a note for each thing counted."""

    lost: int = 0
    doubled: int = 0
    lines_lost: int = 0
    crashes: int = 0
    notes: list[str] = field(default_factory=list)
    remarks: list[str] = field(default_factory=list)  # worth saying, but none of the four counts

    def add(self, kind: str, count: int, note: str) -> None:
        """Count ``count`` of ``kind`` (one of :data:`KINDS`) when it is positive, with what happened."""
        if count <= 0:
            return
        setattr(self, kind, getattr(self, kind) + count)
        self.notes.append(f"{kind.replace('_', ' ')} +{count}: {note}")

    def remark(self, note: str) -> None:
        self.remarks.append(note)

    def check(self, kind: str, ok: bool, note: str) -> None:
        """Count one ``kind`` unless ``ok``."""
        if not ok:
            self.add(kind, 1, note)

    def counts(self) -> tuple[int, int, int, int]:
        return self.lost, self.doubled, self.lines_lost, self.crashes


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any SOONER_ setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOONER_")}
    env.update(extra)
    return env


@dataclass
class Daemon:
    """A long-running ``sooner`` process the lab started (a worker or a scheduler), its stderr in ``log``."""

    name: str
    process: subprocess.Popen
    log: Path
    killed: bool = False  # the trial killed it on purpose: its death is the fault, not a crash

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill9(self) -> None:
        """SIGKILL it (the fault), and reap it."""
        self.killed = True
        if self.alive():
            self.process.kill()
        self.process.wait(10)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class Lab:
    """One trial's temporary directory, databases and processes; :meth:`close` undoes all of it."""

    def __init__(self, tmp: Path, embedded_url: str | None) -> None:
        self.tmp = tmp
        self.embedded_url = embedded_url
        self.daemons: list[Daemon] = []
        self.stores: list[tuple[Store, bool]] = []
        self.cleanups: list[Callable[[], object]] = []  # run last, newest first (database servers stop here)
        self.socket_dir = tmp / "t"  # TMPDIR of every process started: run sockets land here, not in /tmp
        self.socket_dir.mkdir()

    # -- databases --------------------------------------------------------
    def database(self, url: str | None = None) -> tuple[Store, dict[str, str]]:
        """A fresh database (on the bench's embedded server unless ``url``) and the env that names it."""
        url = url or self.embedded_url
        assert url is not None
        name = f"f{uuid.uuid4().hex[:12]}"
        store = Store(url, name)
        store.ensure_indexes()
        self.stores.append((store, True))
        return store, {"SOONER_MONGO_URL": url, "SOONER_DATABASE": name}

    def keep_store(self, store: Store) -> Store:
        """Close ``store`` at the end (without dropping its database)."""
        self.stores.append((store, False))
        return store

    def env(self, database_env: dict[str, str], **extra: str) -> dict[str, str]:
        return clean_env(**{**DAEMON_ENV, **database_env, "TMPDIR": str(self.socket_dir), "PYTHONFAULTHANDLER": "1",
                            **extra})

    # -- processes --------------------------------------------------------
    def spawn(self, name: str, args: list[str], env: dict[str, str], *, ready: str | None = None,
              timeout: float = 30.0) -> Daemon:
        """Start ``python -m sooner ARGS``; with ``ready``, wait for its first stdout line to contain it."""
        log = self.tmp / f"{name}-{len(self.daemons)}.log"
        with open(log, "w") as errors:  # (the child keeps its copy of the file)
            process = subprocess.Popen([sys.executable, "-m", "sooner", *args], cwd=self.tmp, env=env,
                                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors, text=True)
        daemon = Daemon(name, process, log)
        self.daemons.append(daemon)
        if ready is not None:
            line = _readline(process, timeout)
            if ready not in line:
                raise Deadline(f"{name} did not start: {line!r} {daemon.log_text()[-500:]}")
        return daemon

    def worker(self, database_env: dict[str, str], name: str = "w1", *args: str, **extra: str) -> Daemon:
        return self.spawn(f"worker-{name}", ["worker", "-n", name, "--cache-dir", str(self.tmp / f"cache-{name}"),
                                             *args], self.env(database_env, **extra), ready=f"worker {name} ready")

    def scheduler(self, database_env: dict[str, str], **extra: str) -> Daemon:
        return self.spawn("scheduler", ["scheduler"], self.env(database_env, **extra), ready="scheduler ready")

    def sooner(self, args: Iterable[str], env: dict[str, str], cwd: Path | None = None,
               timeout: float = 60) -> subprocess.CompletedProcess:
        """Run a one-shot ``sooner`` command to its end."""
        return subprocess.run([sys.executable, "-m", "sooner", *args], cwd=cwd or self.tmp, env=env,
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def close(self, tally: Tally) -> None:
        """Stop every daemon (counting those that died, left a traceback or did not stop), drop the databases."""
        stopping = []
        for daemon in self.daemons:
            if daemon.killed:
                continue
            if not daemon.alive():
                tally.add("crashes", 1, f"{daemon.name} (pid {daemon.pid}) died during the trial with exit code "
                                        f"{daemon.process.returncode}: {_last_lines(daemon.log_text())}")
                continue
            daemon.process.send_signal(signal.SIGTERM)
            stopping.append(daemon)
        for daemon in stopping:
            try:
                code = daemon.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                daemon.process.send_signal(signal.SIGABRT)  # faulthandler writes every thread's stack to its log
                try:
                    daemon.process.wait(5)
                except subprocess.TimeoutExpired:
                    daemon.process.kill()
                    daemon.process.wait(10)
                tally.add("crashes", 1, f"{daemon.name} (pid {daemon.pid}) did not stop within {STOP_TIMEOUT_S:g}s "
                                        f"of SIGTERM; its threads' stacks are at the end of {daemon.log.name}")
                continue
            if code != 0:
                tally.add("crashes", 1, f"{daemon.name} exited with code {code} on SIGTERM: "
                                        f"{_last_lines(daemon.log_text())}")
        for daemon in self.daemons:
            if daemon.process.stdout:
                daemon.process.stdout.close()
            text = daemon.log_text()
            if "Traceback" in text:
                tally.add("crashes", 1, f"{daemon.name} logged a traceback: {_traceback_of(text)}")
        for store, drop in self.stores:
            try:
                if drop:
                    store.client.drop_database(store.database_name)
            except Exception:  # noqa: BLE001 - a trial may have killed this database's server
                pass
            store.close()
        for cleanup in reversed(self.cleanups):
            try:
                cleanup()
            except Exception as exc:  # noqa: BLE001 - the others must still run
                tally.remark(f"cleanup {cleanup} failed: {exc}")


def _readline(process: subprocess.Popen, timeout: float) -> str:
    """The process's first stdout line, within ``timeout`` (a thread-free wait on the pipe)."""
    import selectors

    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            return ""
    return process.stdout.readline()


def _last_lines(text: str, count: int = 3) -> str:
    return " | ".join(text.strip().splitlines()[-count:])


def _traceback_of(text: str) -> str:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if "Traceback" in line)
    tail = [line for line in lines[start:start + 40] if line and not line.startswith(" ")]
    return " | ".join(tail[:3])


# -- runs, output, processes -----------------------------------------------
def queue(store: Store, job: str, **options: Any) -> Run:
    run = RunService(store).queue(job, ManualTrigger(author="faults"), **options)
    assert run is not None
    return run


def finished(store: Store, run_id: str, timeout: float) -> Run | None:
    """The run once it has finished, or None if it did not within ``timeout`` (the database may be away)."""
    def ended() -> Run | None:
        try:
            run = store.runs.get(run_id)
        except Exception:  # noqa: BLE001 - the database may be away for a while
            return None
        return run if run.status in FINISHED else None
    try:
        return wait_for(ended, timeout, f"run {run_id} to finish", interval=0.05)
    except Deadline:
        return None


def stored(store: Store, run_id: str, stream: str) -> str:
    return "".join(chunk["text"] for chunk in store.output.read(run_id) if chunk["stream"] == stream)


def seq_gaps(store: Store, run_id: str) -> int:
    """How many output chunks are missing or repeated in the run's ``seq`` numbering."""
    seqs = [chunk["seq"] for chunk in store.output.read(run_id)]
    return abs(len(seqs) - len(set(seqs))) + (max(seqs) + 1 - len(set(seqs)) if seqs else 0)


def numbered_loss(lines: list[str], prefix: str, expected: int) -> tuple[int, str]:
    """Lines lost among ``{prefix}0 … {prefix}{expected-1}``: missing, repeated or out of order; and a note."""
    numbers = [int(line[len(prefix):]) for line in lines if line.startswith(prefix) and line[len(prefix):].isdigit()]
    missing = expected - len(set(numbers) & set(range(expected)))
    repeated = len(numbers) - len(set(numbers))
    disorder = sum(1 for a, b in zip(numbers, numbers[1:]) if b <= a) - repeated
    lost = missing + repeated + max(0, disorder)
    note = f"{missing} of {expected} lines missing, {repeated} repeated, {max(0, disorder)} out of order"
    return lost, note


def processes_of(run_id: str) -> dict[int, float]:
    """{pid: create time} of every live process whose environment says it belongs to this run."""
    found = {}
    for process in psutil.process_iter():
        try:
            if process.status() != psutil.STATUS_ZOMBIE and process.environ().get("SOONER_RUN_ID") == run_id:
                found[process.pid] = process.create_time()
        except psutil.Error:
            continue
    return found


def alive(pid: int, created: float) -> bool:
    """That very process (pid and create time) still runs; a zombie or a recycled pid does not count."""
    try:
        process = psutil.Process(pid)
        return abs(process.create_time() - created) < 0.01 and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def survivors(processes: dict[int, float]) -> list[int]:
    return [pid for pid, created in processes.items() if alive(pid, created)]


def kill_survivors(processes: dict[int, float]) -> None:
    """Kill what a failed trial left of a run (only processes verified by pid and create time)."""
    for pid in survivors(processes):
        try:
            psutil.Process(pid).kill()
        except psutil.Error:
            pass


def nx_servers_of(data_dir: Path) -> list[int]:
    """Pids of the live nx_server processes whose command line names this data directory."""
    wanted = os.path.realpath(data_dir)
    pids = []
    for process in psutil.process_iter(["cmdline", "status"]):
        cmdline = process.info["cmdline"] or []
        if process.info["status"] == psutil.STATUS_ZOMBIE or "sooner.store.nx_server" not in cmdline:
            continue
        if any(a == "--data-dir" and b == wanted for a, b in zip(cmdline, cmdline[1:])):
            pids.append(process.pid)
    return sorted(pids)
