"""A database outage never kills a run, drops its output or doubles it (issue #9 item 3), with real processes.

A real worker and a real scheduler (``python -m sooner …``) run a script that
streams numbered lines, progress and events (over stderr and the socket)
while the database is frozen (SIGSTOP) or killed (kill -9) for longer than
the lease. Both on the embedded server (the site starts and restarts it) and
on an nx-27017 server reached through ``mongo_url`` (the code path of a real
MongoDB). Each outage lasts until the script has printed a set number of
lines *during* it (so it outlives the 2 s lease), which proves the script
kept running; the run must then succeed as attempt 1 with every line once,
in order, contiguous sequence numbers, its progress and each event stored
once. In half the cases the script also ends while the database is away, so
its end is journaled too.
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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from conftest import signed_in, wait_for
from test_embedded_safety import nx_servers_of
from sooner.config import load_settings
from sooner.model import ManualTrigger, Run, RunStatus
from sooner.runs.service import RunService
from sooner.store import Store, open_store
from sooner.store.embedded import LOCK_NAME, EmbeddedServer
from sooner.worker.testing import deploy_files

SETTINGS_ENV = {"SOONER_HEARTBEAT_S": "0.2", "SOONER_LEASE_S": "2", "SOONER_CANCEL_GRACE_S": "1",
                "SOONER_SHUTDOWN_GRACE_S": "1", "SOONER_OUTPUT_FLUSH_MS": "50", "SOONER_OUTAGE_GRACE_S": "120"}
JOURNALING = "database unreachable; keeping runs going"  # what the worker logs when its journals start
LINES_DURING_OUTAGE = 150  # at 10 ms a line, ~1.5 s of printing at least, on top of the store's retries

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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Database:
    """The database under test: its server process, and how to keep it down and bring it back.

    ``kill()`` kills the server and keeps it down: the embedded server is restarted by the
    first client that finds it dead, so the test holds its data directory's lock (as a
    server that cannot start would) until ``restart()``.
    """

    kind: str
    store: Store
    env: dict[str, str]
    pid: Callable[[], int | None]
    kill: Callable[[], None]
    restart: Callable[[], None]


def nx_command(data_dir: Path, port: int) -> list[str]:
    return [sys.executable, "-m", "sooner.store.nx_server", "--instance", uuid.uuid4().hex,
            "--data-dir", str(data_dir), "--host", "127.0.0.1", "--port", str(port),
            "--pid-file", str(data_dir / "nx.pid"), "--log-file", str(data_dir / "nx.log")]


@pytest.fixture
def database(request, tmp_path: Path, site: Path):
    """``request.param``: "embedded" (the site's own server) or "mongo_url" (an nx-27017 server of the test's)."""
    if request.param == "embedded":
        settings = load_settings(site / "config.json", environ={})
        store = open_store(settings)
        server = EmbeddedServer(settings.state_dir)
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

        yield Database("embedded", store, {"SOONER_CONFIG": str(site / "config.json")},
                       pid=lambda: server.status().pid, kill=lambda: wait_for(lock_out, 30, message="lock-out"),
                       restart=unlock)
        unlock()
        store.close()
        return
    data_dir, port = tmp_path / "nx", free_port()
    data_dir.mkdir()
    servers: list[subprocess.Popen] = []

    def start() -> None:
        if servers:
            servers[-1].wait(10)  # reap the killed one: a zombie's pid still looks alive to nx-27017's pid check
        log = open(tmp_path / f"nx-{len(servers)}.log", "w")
        servers.append(subprocess.Popen(nx_command(data_dir, port), stdout=log, stderr=subprocess.STDOUT))
    start()
    url = f"mongodb://127.0.0.1:{port}"
    store = Store(url, "outage")
    wait_for(lambda: _answers(store), 30, message="the nx-27017 server to answer")
    store.ensure_indexes()
    db = Database("mongo_url", store, {"SOONER_MONGO_URL": url, "SOONER_DATABASE": "outage"},
                  pid=lambda: servers[-1].pid if servers[-1].poll() is None else None,
                  kill=lambda: servers[-1].kill(), restart=start)
    yield db
    store.close()
    for server in servers:
        if server.poll() is None:
            os.kill(server.pid, signal.SIGCONT)
            server.kill()
        server.wait(10)


def _answers(store: Store) -> bool:
    try:
        store.client.admin.command("ping")
        return True
    except Exception:
        return False


@pytest.fixture
def daemons(database: Database, tmp_path: Path):
    """Start `sooner worker -n w1` and `sooner scheduler` on the database; both must outlive the outage."""
    started: list[subprocess.Popen] = []

    def start(marks: Path, go: Path) -> list[subprocess.Popen]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SOONER_")}
        env.update(SETTINGS_ENV, **database.env, OUTAGE_MARKS=str(marks), OUTAGE_GO=str(go))
        for args in (["worker", "-n", "w1", "--cache-dir", str(tmp_path / "cache")], ["scheduler"]):
            process = subprocess.Popen([sys.executable, "-m", "sooner", *args], cwd=tmp_path, env=env,
                                       stdout=subprocess.PIPE, stderr=open(tmp_path / f"{args[0]}.log", "w"),
                                       text=True)
            started.append(process)
            assert "ready" in process.stdout.readline(), (tmp_path / f"{args[0]}.log").read_text()
        return started

    yield start
    for process in started:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


def marks_of(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def printed(path: Path) -> int:
    return sum(1 for line in marks_of(path) if line.isdigit())


# A frozen embedded server is replaced by the first client that finds it not answering (within the store's
# retries, so the run only stalls); a killed one is kept down by holding its data directory's lock. Each
# database gets each fault, and each fault is tried with the script ending during the outage and after it.
@pytest.mark.parametrize("database, fault, end_during_outage", [
    ("embedded", "sigstop", False), ("embedded", "kill9", True),
    ("mongo_url", "sigstop", True), ("mongo_url", "kill9", False),
], indirect=["database"])
def test_a_run_lives_through_a_database_outage_with_nothing_lost_or_doubled(database, daemons, tmp_path, fault,
                                                                            end_during_outage):
    # given a streaming script running on a real worker, with a real scheduler watching leases
    marks, go = tmp_path / "marks", tmp_path / "go"
    deploy_files(database.store, {"stream.py": STREAM})
    worker, scheduler = daemons(marks, go)
    run = RunService(database.store).queue("stream.py", ManualTrigger())
    wait_for(lambda: printed(marks) >= 20, 30, message="the script to start printing")

    # when the database goes away for longer than the lease (2 s): the script keeps printing meanwhile
    pid = database.pid()
    assert pid is not None
    server = psutil.Process(pid)
    if fault == "sigstop":
        os.kill(pid, signal.SIGSTOP)
    else:
        database.kill()
    # (the worker journals once the store's retries give up; a frozen embedded server is replaced first)
    journaled = not (database.kind == "embedded" and fault == "sigstop")
    if journaled:
        wait_for(lambda: JOURNALING in (tmp_path / "worker.log").read_text(), 60, message="the worker to journal")
    before = printed(marks)
    wait_for(lambda: printed(marks) >= before + LINES_DURING_OUTAGE, 60,
             message="the script to go on printing while the database is away")
    if end_during_outage:
        go.touch()
        wait_for(lambda: any(line.startswith("done") for line in marks_of(marks)), 30,
                 message="the script to end while the database is away")
    if fault == "sigstop":
        if server.is_running() and server.status() == psutil.STATUS_STOPPED:
            os.kill(pid, signal.SIGCONT)  # (a frozen embedded server may have been replaced already)
    else:
        database.restart()
    go.touch()

    # then the run succeeds, once, with everything the script said
    def ended() -> Run | None:
        try:
            current = database.store.runs.get(run.id)
        except Exception:
            return None
        return current if current.finished else None
    final = wait_for(ended, 90, message="the run to end")
    output = database.store.output.read(run.id)
    stdout = "".join(chunk["text"] for chunk in output if chunk["stream"] == "stdout").splitlines()
    system = "".join(chunk["text"] for chunk in output if chunk["stream"] == "system")
    assert final.status is RunStatus.SUCCEEDED and final.attempt == 1, (final, system)
    assert [r.id for r in database.store.runs.list(job="stream.py", limit=10)] == [run.id], "a retry ran"
    total = int(stdout[-1].split()[1])
    assert stdout == [f"line {i}" for i in range(total)] + [f"done {total}"]
    assert [chunk["seq"] for chunk in output] == list(range(len(output)))
    assert final.progress is not None and final.progress.current == total
    if journaled:
        assert "the database is unreachable; the run goes on" in system
        assert "the database is back" in system
    # every event once: the socket's replies named ids (some "spooled"), the stderr ones are counted
    replies = [json.loads(line)["emit"] for line in marks_of(marks) if line.startswith("{")]
    assert not journaled or any(reply.get("spooled") for reply in replies), replies
    events = [e for e in database.store.events.list(limit=1000) if e["name"].startswith("outage.")]
    socket_ids = sorted(e["_id"] for e in events if e["name"] == "outage.socket")
    assert socket_ids == sorted(reply["event"] for reply in replies)
    assert sorted(e["data"] for e in events if e["name"] == "outage.stderr") == list(range(0, total, 100))
    # and neither daemon died
    assert worker.poll() is None and scheduler.poll() is None


@pytest.mark.parametrize("database", ["mongo_url"], indirect=True)
def test_sooner_logs_follow_waits_through_an_outage(database, daemons, tmp_path):
    marks, go = tmp_path / "marks", tmp_path / "go"
    deploy_files(database.store, {"stream.py": STREAM})
    daemons(marks, go)
    run = RunService(database.store).queue("stream.py", ManualTrigger())
    wait_for(lambda: printed(marks) >= 20, 30, message="the script to start printing")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOONER_")}
    env.update(SETTINGS_ENV, **database.env)
    errors = tmp_path / "follow.err"
    follower = subprocess.Popen([sys.executable, "-m", "sooner", "logs", run.id, "--follow"], cwd=tmp_path, env=env,
                                stdout=subprocess.PIPE, stderr=open(errors, "w"), text=True)
    first = follower.stdout.readline()  # following: the outage starts after it found the run
    database.kill()
    wait_for(lambda: JOURNALING in (tmp_path / "worker.log").read_text(), 60, message="the worker to journal")
    before = printed(marks)
    wait_for(lambda: printed(marks) >= before + LINES_DURING_OUTAGE, 60, message="printing during the outage")
    # (the follower sees the outage once its own store retries give up: keep the database down until then)
    wait_for(lambda: "waiting for it" in errors.read_text(), 60, message="the follower to say it waits")
    database.restart()
    go.touch()
    out = follower.stdout.read()  # (not communicate(): it would skip what readline() buffered)
    follower.wait(120)
    err = errors.read_text()
    assert follower.returncode == 0, err
    lines = (first + out).splitlines()
    total = int(lines[-1].split()[1])
    assert lines == [f"line {i}" for i in range(total)] + [f"done {total}"]
    assert "waiting for it" in err and "the database is back; following again" in err
    assert f"run {run.ref} succeeded" in err


def test_the_web_shows_a_banner_and_retries_while_the_database_is_away(tmp_path):
    from sooner.config import Settings
    from sooner.webapp import create_app

    data_dir, port = tmp_path / "nx", free_port()
    data_dir.mkdir()
    server = subprocess.Popen(nx_command(data_dir, port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"mongodb://127.0.0.1:{port}"
        store = Store(url, "web", retry_attempts=1)
        wait_for(lambda: _answers(store), 30, message="the server to answer")
        store.ensure_indexes()
        store.users.add("ada", "correct horse battery", admin=True)
        token, _ = store.tokens.create("ada", "outage")
        app, _ = create_app(Settings(mongo_url=url, database="web", secret_key="k" * 32), store, live=False)
        client = signed_in(app, "ada", "correct horse battery")
        assert client.get("/").status_code == 200
        assert client.get("/api/runs", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        # when the database is killed
        server.kill()
        server.wait(10)
        page = client.get("/", headers={"Accept": "text/html"})
        api = client.get("/api/runs", headers={"Authorization": f"Bearer {token}"})
        # then pages say so and retry by themselves, the API answers 503 with Retry-After, nothing is a 500
        assert page.status_code == 503 and page.headers["Retry-After"] == "5"
        assert '<meta http-equiv="refresh" content="5">' in page.text and "Runs go on meanwhile" in page.text
        assert api.status_code == 503 and api.headers["Retry-After"] == "5"
        assert "cannot reach the database" in api.get_json()["error"]
    finally:
        if server.poll() is None:
            server.kill()
        server.wait(10)
