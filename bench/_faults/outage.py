"""A database outage during a streaming run: frozen (SIGSTOP) or killed (kill -9), longer than the lease.

As tests/test_outage.py: a real ``sooner worker`` and ``sooner scheduler``
run a script that prints numbered lines, progress and events (over stderr and
the socket) while the database is away. An nx-27017 server reached through
``mongo_url`` (the code path of a real MongoDB) is frozen or killed; the
embedded server of a site is killed and kept down by holding its data
directory's lock (as a server that cannot start would). The outage lasts
until the script has printed a set number of lines during it, after the
worker said it journals; in "run ends during outage" the script also ends
before the database comes back.

Counted: the run not succeeding as attempt 1 (lost), a second run of the job
or an event stored twice (doubled), a stdout line missing, repeated or out of
order, a gap in the chunks' sequence numbers or the last progress value not
recorded (lines lost), an event the script was told about (or emitted on
stderr) that is not stored (lost), and a daemon that died or logged a
traceback (crashes).
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from _faults.harness import Lab, Tally, finished, nx_servers_of, queue, seq_gaps, stored, wait_for
from sooner.config import load_settings
from sooner.model import Run, RunStatus
from sooner.site import init_site
from sooner.store import Store, open_store
from sooner.store.embedded import LOCK_NAME, EmbeddedServer
from sooner.worker.testing import deploy_files

JOURNALING = "database unreachable; keeping runs going"  # the worker's log line when its journals start
LINES_DURING_OUTAGE = 50  # printed after the worker began to journal (the outage is then well past the lease)

STREAM = """#!/usr/bin/env python3
import json, os, sys, time
from sooner import api
marks = open(os.environ["OUTAGE_MARKS"], "a", buffering=1)
go = os.environ["OUTAGE_GO"]
i = 0
while not os.path.exists(go):
    print(f"line {i}", flush=True)
    print(f">>> sooner.progress({i + 1}, {i + 1})", file=sys.stderr, flush=True)
    if i % 100 == 0:
        print(f'>>> sooner.emit("outage.stderr", {i})', file=sys.stderr, flush=True)
    if i % 100 == 50:
        marks.write(json.dumps({"emit": api.emit("outage.socket", {"i": i})}) + "\\n")
    marks.write(f"{i}\\n")
    i += 1
    time.sleep(0.01)
print(f"done {i}", flush=True)
marks.write(f"done {i}\\n")
"""


@dataclass
class Database:
    """The database under test: its store, the env that names it, its server's pid, and how to take it away."""

    kind: str
    store: Store
    env: dict[str, str]
    pid: Callable[[], int | None]
    kill: Callable[[], None]
    restart: Callable[[], None]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _answers(store: Store) -> bool:
    try:
        store.client.admin.command("ping")
        return True
    except Exception:  # noqa: BLE001 - not answering is the answer
        return False


def nx_database(lab: Lab) -> Database:
    """An nx-27017 server of the trial's own, reached through ``mongo_url``; kill -9 and restart on its port."""
    data_dir, port = lab.tmp / "nx", free_port()
    data_dir.mkdir()
    servers: list[subprocess.Popen] = []

    def start() -> None:
        if servers:
            servers[-1].wait(10)  # reap the killed one: a zombie's pid still looks alive to nx-27017's pid check
        with open(lab.tmp / f"nx-{len(servers)}.log", "w") as log:
            servers.append(subprocess.Popen(
                [sys.executable, "-m", "sooner.store.nx_server", "--instance", uuid.uuid4().hex, "--data-dir",
                 str(data_dir), "--host", "127.0.0.1", "--port", str(port), "--pid-file", str(data_dir / "nx.pid"),
                 "--log-file", str(data_dir / "nx.log")], stdout=log, stderr=subprocess.STDOUT))

    def stop_all() -> None:
        for server in servers:
            if server.poll() is None:
                os.kill(server.pid, signal.SIGCONT)
                server.kill()
            server.wait(10)

    start()
    lab.cleanups.append(stop_all)
    url = f"mongodb://127.0.0.1:{port}"
    store = lab.keep_store(Store(url, "outage"))
    wait_for(lambda: _answers(store), 30, "the nx-27017 server to answer")
    store.ensure_indexes()
    return Database("mongo_url", store, {"SOONER_MONGO_URL": url, "SOONER_DATABASE": "outage"},
                    pid=lambda: servers[-1].pid if servers[-1].poll() is None else None,
                    kill=lambda: servers[-1].kill(), restart=start)


def embedded_database(lab: Lab) -> Database:
    """A site's own embedded server; killed and kept down by holding its data directory's lock."""
    site = lab.tmp / "site"
    settings = init_site(site)
    server = EmbeddedServer(settings.state_dir)
    lab.cleanups.append(server.stop)
    store = lab.keep_store(open_store(load_settings(site / "config.json", environ={})))
    data_dir = settings.state_dir / "db"
    held: list[int] = []

    def lock_out() -> bool:
        for pid in nx_servers_of(data_dir):
            os.kill(pid, signal.SIGKILL)
        fd = os.open(data_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # a client restarted it meanwhile (or the dead one's lock is not gone yet)
            os.close(fd)
            return False
        held.append(fd)
        return True

    def unlock() -> None:
        while held:
            os.close(held.pop())  # the next client that needs the database starts it again

    def kill() -> None:
        wait_for(lock_out, 30, "the lock-out")

    lab.cleanups.append(unlock)
    return Database("embedded", store, {"SOONER_CONFIG": str(site / "config.json")},
                    pid=lambda: server.status().pid, kill=kill, restart=unlock)


def marks_of(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def printed(path: Path) -> int:
    return sum(1 for line in marks_of(path) if line.isdigit())


def outage(lab: Lab, tally: Tally, kind: str, fault: str, end_during_outage: bool) -> None:
    """One outage of ``kind`` ("mongo_url" or "embedded") by ``fault`` ("sigstop" or "kill9") during a run."""
    database = nx_database(lab) if kind == "mongo_url" else embedded_database(lab)
    store = database.store
    marks, go = lab.tmp / "marks", lab.tmp / "go"
    deploy_files(store, {"stream.py": STREAM})
    env = {**database.env, "SOONER_OUTAGE_GRACE_S": "120", "OUTAGE_MARKS": str(marks), "OUTAGE_GO": str(go)}
    worker = lab.worker(env, "w1")
    lab.scheduler(env)
    run = queue(store, "stream.py")
    wait_for(lambda: printed(marks) >= 20, 30, "the script to start printing")

    pid = database.pid()
    assert pid is not None, "the database server's pid"
    server = psutil.Process(pid)
    if fault == "sigstop":
        os.kill(pid, signal.SIGSTOP)
    else:
        database.kill()
    try:
        wait_for(lambda: JOURNALING in worker.log_text(), 60, "the worker to journal")
        before = printed(marks)
        wait_for(lambda: printed(marks) >= before + LINES_DURING_OUTAGE, 60,
                 "the script to go on printing while the database is away")
        if end_during_outage:
            go.touch()
            wait_for(lambda: any(line.startswith("done") for line in marks_of(marks)), 30,
                     "the script to end while the database is away")
    finally:
        if fault == "sigstop":
            if server.is_running() and server.status() == psutil.STATUS_STOPPED:
                os.kill(pid, signal.SIGCONT)
        else:
            database.restart()
        go.touch()

    final = finished(store, run.id, 90)
    if final is None:
        tally.add("lost", 1, f"run {run.id} did not finish within 90 s of the database's return")
        return
    tally.check("lost", final.status is RunStatus.SUCCEEDED and final.attempt == 1,
                f"run {run.id} ended {final.status.value} (attempt {final.attempt}): {final.note}")
    runs = store.runs.list(job="stream.py", limit=10)
    tally.add("doubled", len(runs) - 1, f"{len(runs)} runs of the job: a retry ran")
    _count_lines(store, tally, run.id, final, marks)
    _count_events(store, tally, marks)


def _count_lines(store: Store, tally: Tally, run_id: str, final: Run, marks: Path) -> None:
    """Compare the stored stdout with what the script marked as printed (each mark follows its line)."""
    lines = stored(store, run_id, "stdout").splitlines()
    total = printed(marks)
    done = [line for line in marks_of(marks) if line.startswith("done ")]
    expected = [f"line {i}" for i in range(total)] + done
    if lines != expected:
        missing = len(set(expected) - set(lines))
        repeated = len(lines) - len(set(lines))
        unmarked = len(set(lines) - set(expected))  # at most the line printed as the script was killed
        disorder = 0 if missing or repeated else sum(1 for a, b in zip(lines, expected) if a != b)
        tally.add("lines_lost", missing + repeated + disorder + max(0, unmarked - 1),
                  f"of {len(expected)} lines printed, {missing} missing, {repeated} repeated, {disorder} out of "
                  f"place (stored {len(lines)}, the last {lines[-1:]})")
    gaps = seq_gaps(store, run_id)
    tally.add("lines_lost", gaps, f"{gaps} output chunks missing or repeated in the seq numbering")
    current = final.progress.current if final.progress else None
    tally.check("lines_lost", current == total, f"the last progress value {total} was not recorded ({current})")


def _count_events(store: Store, tally: Tally, marks: Path) -> None:
    replies = [json.loads(line)["emit"] for line in marks_of(marks) if line.startswith("{")]
    told = {str(reply["event"]) for reply in replies}
    events = [e for e in store.events.list(limit=5000) if e["name"].startswith("outage.")]
    socket_ids = Counter(str(e["_id"]) for e in events if e["name"] == "outage.socket")
    tally.add("lost", len(told - set(socket_ids)), "socket events the script was told about are not stored")
    tally.add("doubled", sum(socket_ids.values()) - len(set(socket_ids) & told),
              "socket events stored twice or without the script being told")
    total = printed(marks)
    stderr_data = Counter(e["data"] for e in events if e["name"] == "outage.stderr")
    wanted = set(range(0, total, 100))
    tally.add("lost", len(wanted - set(stderr_data)), "stderr events not stored")
    tally.add("doubled", sum(stderr_data.values()) - len(set(stderr_data)), "stderr events stored twice")


def sigstop_mongo_url(lab: Lab, tally: Tally, index: int) -> None:
    outage(lab, tally, "mongo_url", "sigstop", end_during_outage=False)


def kill9_mongo_url(lab: Lab, tally: Tally, index: int) -> None:
    outage(lab, tally, "mongo_url", "kill9", end_during_outage=False)


def kill9_embedded(lab: Lab, tally: Tally, index: int) -> None:
    outage(lab, tally, "embedded", "kill9", end_during_outage=False)


ENDING_CASES = [("mongo_url", "sigstop"), ("mongo_url", "kill9"), ("embedded", "kill9")]


def ends_during_outage(lab: Lab, tally: Tally, index: int) -> None:
    """The script ends while the database is away; the trials take the three outages in turn."""
    kind, fault = ENDING_CASES[index % len(ENDING_CASES)]
    outage(lab, tally, kind, fault, end_during_outage=True)
