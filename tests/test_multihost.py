"""Database, web and scheduler on one host, a worker on each of two others (issue #12, "Multi-host test").

The same scenario runs twice:

- on three network-namespace hosts (``tests/netns.py``): ``db`` holds an nx-27017
  server listening on its veth address only, ``sooner web`` and ``sooner
  scheduler``; ``w1`` and ``w2`` each run ``sooner worker`` with its own host
  name (a UTS namespace) and reach the database over the bridge. It is skipped,
  with the reason printed by ``-ra``, only where namespaces cannot be made;
- over loopback, always: every process on 127.0.0.1 of this machine.

Scenario: jobs arrive by a real ``git push`` (the site's hook deploys them on
the db host); the test sets them up and starts runs through the web's REST
API: one job aimed at worker ``w1`` by name, one at tag ``t2`` (w2's), and an
untargeted one with retries whose script sleeps when it runs on w1. Each runs
where it was aimed. Then w1's worker is killed with SIGKILL: its script must
be gone (its supervisor kills it, checked by pid and create time from the
test's namespace, since pids are shared), its run must end ``lost`` and its
retry must succeed on w2.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import requests

from conftest import alive, git, wait_for
from netns import Host, Network, namespaces_unavailable
from sooner.model import FINISHED, Run, RunStatus
from sooner.model.token import TokenScope
from sooner.site import init_site
from sooner.store import Store

DATABASE = "multihost"
# Short leases so a killed worker's run is lost within seconds; outage_grace_s 0 so its retry waits
# only cancel_grace_s (no copy may outlive the lease: sooner.config.Settings.outlives_lease_s).
TIMING = {"heartbeat_s": 0.5, "lease_s": 3.0, "cancel_grace_s": 1.0, "shutdown_grace_s": 1.0,
          "outage_grace_s": 0.0, "output_flush_ms": 50}
START_S = 30.0  # a process start on a loaded 2-core machine
# The installed `sooner` entry point beside this interpreter (the venv's), as a deployment runs it.
ENTRY_POINT = Path(sys.executable).with_name("sooner")
SOONER = [str(ENTRY_POINT)] if ENTRY_POINT.exists() else [sys.executable, "-m", "sooner"]

WHERE = '#!/bin/sh\necho "on $SOONER_WORKER at $(uname -n)"\n'
# Sleeps only on w1 (the worker the test kills), so its retry elsewhere succeeds.
LONG = ('#!/bin/sh\necho "on $SOONER_WORKER at $(uname -n) pid $$"\n'
        'if [ "$SOONER_WORKER" = w1 ]; then exec sleep 600; fi\n')
JOBS = {"on_w1.sh": WHERE, "on_t2.sh": WHERE, "long.sh": LONG}


@dataclass(frozen=True)
class Topology:
    """The three hosts of the scenario (all loopback, or one namespace each)."""

    db: Host
    w1: Host
    w2: Host


class Daemons:
    """Long-running processes of the test, each with a log file; ``stop_all()`` kills every one."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.started: dict[str, subprocess.Popen] = {}
        self.scripts: list[tuple[int, float]] = []  # (pid, create time) of scripts to kill if a test leaves them

    def start(self, name: str, host: Host, argv: Sequence[str], env: dict[str, str], cwd: Path) -> subprocess.Popen:
        log = open(self.log_path(name), "w")
        process = subprocess.Popen(host.command(argv), cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
        log.close()
        self.started[name] = process
        return process

    def log_path(self, name: str) -> Path:
        return self.folder / f"{name}.log"

    def log(self, name: str) -> str:
        path = self.log_path(name)
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_ready(self, name: str, text: str) -> None:
        """Wait until the process printed ``text``; fail with its log when it exits or takes too long."""
        process = self.started[name]
        wait_for(lambda: text in self.log(name) or process.poll() is not None, START_S,
                 message=f"{name} to print {text!r}:\n{self.log(name)}")
        assert process.poll() is None, f"{name} exited with {process.returncode}:\n{self.log(name)}"

    def stop_all(self) -> None:
        # SIGKILL: a worker's scripts die with it (their supervisor sees its stdin close).
        for process in self.started.values():
            if process.poll() is None:
                process.kill()
        for process in self.started.values():
            process.wait(20)
        for pid, created in self.scripts:  # only when the product failed to: the check says so already
            if alive(pid, created):
                psutil.Process(pid).kill()

    def logs(self) -> str:
        return "\n".join(f"--- {name}\n{self.log(name)}" for name in self.started)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def base_env() -> dict[str, str]:
    """This process's environment without Sooner settings (each process gets its own below)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("SOONER_")}


# -- the scenario, on any topology ----------------------------------------------------------------------
class Scenario:
    """One site whose database, web and scheduler run on ``topology.db`` and workers on w1 and w2."""

    def __init__(self, topology: Topology, daemons: Daemons, tmp_path: Path, db_port: int, web_port: int) -> None:
        self.topology, self.daemons, self.tmp_path = topology, daemons, tmp_path
        self.db_url = f"mongodb://{topology.db.address}:{db_port}"
        self.web_url = f"http://{topology.db.address}:{web_port}"
        self.web_port = web_port
        self.db_port = db_port
        self.store: Store | None = None
        self.site = tmp_path / "site"
        self.session = requests.Session()

    # -- the db host ---------------------------------------------------------------------------------
    def start_database(self) -> Store:
        data_dir = self.tmp_path / "nx"
        data_dir.mkdir()
        # The embedded launcher binds 127.0.0.1 only, so the db host runs the same server module itself,
        # on its network address (what `mongo_url` to another machine's MongoDB means).
        self.daemons.start("nx", self.topology.db, [
            sys.executable, "-m", "sooner.store.nx_server", "--instance", uuid.uuid4().hex,
            "--data-dir", str(data_dir), "--host", self.topology.db.address, "--port", str(self.db_port),
            "--pid-file", str(data_dir / "nx.pid"), "--log-file", str(data_dir / "nx.log")],
            base_env(), self.tmp_path)
        self.store = Store(self.db_url, DATABASE)
        wait_for(self._database_answers, START_S, message=f"the nx-27017 server at {self.db_url}")
        self.store.ensure_indexes()
        return self.store

    def _database_answers(self) -> bool:
        assert self.daemons.started["nx"].poll() is None, self.daemons.log("nx")
        try:
            self.store.client.admin.command("ping")
            return True
        except Exception:
            return False

    def make_site(self) -> Path:
        site = self.site
        init_site(site)
        config = json.loads((site / "config.json").read_text())
        config.update(TIMING, mongo_url=self.db_url, database=DATABASE, web_host=self.topology.db.address,
                      web_port=self.web_port)
        (site / "config.json").write_text(json.dumps(config, indent=2))
        return site

    def start_site_daemons(self) -> None:
        env = {**base_env(), "SOONER_CONFIG": str(self.site / "config.json")}
        self.daemons.start("scheduler", self.topology.db, [*SOONER, "scheduler"], env,
                           self.site)
        self.daemons.start("web", self.topology.db, [*SOONER, "web", "--threads", "8"], env,
                           self.site)
        self.daemons.wait_ready("scheduler", "sooner scheduler ready")
        wait_for(self._web_answers, START_S, message=f"the web server at {self.web_url}:\n{self.daemons.log('web')}")

    def _web_answers(self) -> bool:
        assert self.daemons.started["web"].poll() is None, self.daemons.log("web")
        try:
            return requests.get(f"{self.web_url}/healthz", timeout=2).json() == {"ok": True}
        except requests.RequestException:
            return False

    def sign_in_api(self) -> None:
        self.store.users.add("operator", secrets.token_urlsafe(16), admin=True)
        token, _ = self.store.tokens.create("operator", "multihost", scope=TokenScope.ADMIN)
        self.session.headers["Authorization"] = f"Bearer {token}"

    def push_jobs(self, files: dict[str, str]) -> None:
        """Commit ``files`` to a clone of the site's scripts.git and push from the db host (its hook deploys)."""
        clone = self.tmp_path / "clone"
        git("clone", "-q", str(self.site / "scripts.git"), str(clone), cwd=self.tmp_path)
        git("checkout", "-q", "-B", "main", cwd=clone)
        for name, text in files.items():
            (clone / name).write_text(text)
            (clone / name).chmod(0o755)
        git("add", "-A", cwd=clone)
        git("commit", "-q", "-m", "multi-host jobs", cwd=clone)
        env = {**base_env(), "GIT_TERMINAL_PROMPT": "0"}
        pushed = subprocess.run(self.topology.db.command(["git", "push", "origin", "main"]), cwd=clone, env=env,
                                capture_output=True, text=True, timeout=120)
        assert pushed.returncode == 0, pushed.stdout + pushed.stderr
        head = git("rev-parse", "HEAD", cwd=clone).stdout.strip()
        assert [self.store.jobs.get(name).commit for name in files] == [head] * len(files), pushed.stderr

    # -- the worker hosts ----------------------------------------------------------------------------
    def start_worker(self, name: str, host: Host, tags: str) -> subprocess.Popen:
        """``sooner worker -n NAME --tags TAGS`` on ``host``, with nothing but the database URL (no site)."""
        env = {**base_env(), "SOONER_MONGO_URL": self.db_url, "SOONER_DATABASE": DATABASE,
               **{f"SOONER_{key.upper()}": str(value) for key, value in TIMING.items()}}
        process = self.daemons.start(name, host, [
            *SOONER, "worker", "-n", name, "--tags", tags,
            "--cache-dir", str(self.tmp_path / f"cache-{name}")], env, self.tmp_path)
        self.daemons.wait_ready(name, f"worker {name} ready")
        return process

    # -- the web API ---------------------------------------------------------------------------------
    def set_job(self, name: str, **settings: object) -> None:
        response = self.session.patch(f"{self.web_url}/api/v1/jobs/{name}", json=settings, timeout=30)
        assert response.status_code == 200, response.text

    def start_run(self, job: str) -> str:
        response = self.session.post(f"{self.web_url}/api/v1/jobs/{job}/runs", json={}, timeout=30)
        assert response.status_code == 201, response.text
        return response.json()["id"]

    # -- checks --------------------------------------------------------------------------------------
    def run(self, run_id: str) -> Run | None:
        # find, not get: a retry's id is linked (next_attempt) a moment before the retry is inserted
        return self.store.runs.find(run_id)

    def finished(self, run_id: str, timeout: float = 30) -> Run:
        return wait_for(lambda: (run := self.run(run_id)) is not None and run.status in FINISHED and run, timeout,
                        message=f"run {run_id} to finish:\n{self.daemons.logs()}")

    def expected_host(self, host: Host) -> str:
        return host.hostname or socket.gethostname()


def run_scenario(topology: Topology, daemons: Daemons, tmp_path: Path, db_port: int, web_port: int) -> None:
    world = Scenario(topology, daemons, tmp_path, db_port, web_port)
    try:
        _play(world)
    finally:
        if world.store is not None:
            world.store.close()


def _play(world: Scenario) -> None:
    topology = world.topology
    # given the database, web and scheduler on the db host, and w1 on its own host
    store = world.start_database()
    world.make_site()
    world.start_site_daemons()
    world.sign_in_api()
    w1 = world.start_worker("w1", topology.w1, "t1")
    # and three jobs pushed through git, set up through the web: one for w1 by name, one for tag t2,
    # and a retried one for any worker
    world.push_jobs(JOBS)
    world.set_job("on_w1.sh", worker="w1")
    world.set_job("on_t2.sh", worker="t2")
    world.set_job("long.sh", retry={"attempts": 2, "backoff_base_s": 0})

    # when the untargeted job starts while w1 is the only worker, it runs there (and sleeps)
    long_id = world.start_run("long.sh")
    first = wait_for(lambda: (run := world.run(long_id)) and run.pid_started_at is not None and run, 30,
                     message=f"long.sh to start on w1:\n{world.daemons.logs()}")
    assert (first.worker, first.host) == ("w1", world.expected_host(topology.w1))
    world.daemons.scripts.append((first.pid, first.pid_started_at))
    script = psutil.Process(first.pid)
    assert abs(script.create_time() - first.pid_started_at) < 0.01
    assert script.environ().get("SOONER_RUN_ID") == long_id  # the very script, seen from the test's namespace

    # when w2 (tag t2) joins from its own host, runs aimed by name and by tag go where they are aimed
    world.start_worker("w2", topology.w2, "t2")
    on_w1, on_t2 = world.start_run("on_w1.sh"), world.start_run("on_t2.sh")
    for run_id, worker, host in ((on_w1, "w1", topology.w1), (on_t2, "w2", topology.w2)):
        run = world.finished(run_id)
        hostname = world.expected_host(host)
        assert (run.status, run.worker, run.host) == (RunStatus.SUCCEEDED, worker, hostname), run
        assert f"on {worker} at {hostname}" in store.output.text(run_id)

    # when w1's worker is killed with SIGKILL (the pid it registered is the process the test started)
    assert store.workers.get("w1").pid == w1.pid
    os.kill(w1.pid, signal.SIGKILL)
    w1.wait(10)

    # then its orphaned script is gone, its run ends lost, and the retry succeeds on w2
    wait_for(lambda: not alive(first.pid, first.pid_started_at), 10,
             message=f"w1's script (pid {first.pid}) to die with its worker")
    lost = world.finished(long_id, 30)
    assert lost.status == RunStatus.LOST, lost
    retry_id = wait_for(lambda: world.run(long_id).next_attempt, 30, message="the lost run's retry")
    retry = world.finished(retry_id, 30)
    w2_host = world.expected_host(topology.w2)
    assert (retry.status, retry.worker, retry.host, retry.attempt, retry.chain) == (
        RunStatus.SUCCEEDED, "w2", w2_host, 2, long_id), retry
    assert f"on w2 at {w2_host}" in store.output.text(retry_id)
    # and each worker registered the host name it runs on: what the start-up recovery of a worker goes by
    # (it kills processes of runs recorded on its own host only)
    assert [store.workers.get(name).host for name in ("w1", "w2")] == [
        world.expected_host(topology.w1), w2_host]


# -- fixtures and the two variants ---------------------------------------------------------------------
@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Daemons]:
    started = Daemons(tmp_path)
    yield started
    started.stop_all()


@pytest.fixture
def network() -> Iterator[Network]:
    """Hosts db, w1 and w2 in network namespaces; skipped (reason printed) where namespaces cannot be made."""
    reason = namespaces_unavailable()
    if reason is not None:
        pytest.skip(reason)
    made = Network(["db", "w1", "w2"]).create()
    yield made
    made.destroy()


@pytest.mark.slow
def test_jobs_run_where_aimed_and_a_killed_hosts_run_is_retried_on_another_host(network, daemons, tmp_path):
    hosts = network.hosts
    # each host has a name of its own (so the run.host checks tell them apart)
    assert len({host.hostname for host in hosts.values()} | {socket.gethostname()}) == 4
    # Fresh namespaces: the usual ports are free. On failure the fixtures clean up (daemons first,
    # since they were requested after the network).
    run_scenario(Topology(hosts["db"], hosts["w1"], hosts["w2"]), daemons, tmp_path, 27017, 8080)
    daemons.stop_all()
    network.destroy()
    assert network.leftovers() == []


@pytest.mark.slow
def test_the_same_scenario_over_loopback(daemons, tmp_path):
    # Every process on this machine's 127.0.0.1. What this cannot show: that the parts talk over a real
    # network, and that runs record the host they ran on as another machine (every host name is this
    # machine's, and the product has no option to fake one); it checks the rest.
    here = Host("local", "127.0.0.1")
    run_scenario(Topology(here, here, here), daemons, tmp_path, free_port(), free_port())
