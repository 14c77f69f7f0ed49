"""`sooner worker` and `sooner cancel` as real processes: signals, competing workers, a real git push."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter

import pytest

from conftest import git, run_sooner, wait_for
from sooner.config import load_settings
from sooner.model import FINISHED, ManualTrigger, Progress, Run
from sooner.runs.service import RunService
from sooner.store import open_store
from sooner.worker.testing import deploy_files

SETTINGS_ENV = {"SOONER_HEARTBEAT_S": "0.2", "SOONER_LEASE_S": "2", "SOONER_CANCEL_GRACE_S": "1",
                "SOONER_SHUTDOWN_GRACE_S": "1", "SOONER_OUTPUT_FLUSH_MS": "50"}


@pytest.fixture
def store(embedded_store):
    return embedded_store


@pytest.fixture
def spawn_worker(store, tmp_path):
    """Start `python -m sooner worker` against the test database (no site, like a remote machine)."""
    processes: list[subprocess.Popen] = []

    def spawn(name: str, *args: str, ready: bool = True, extra_env: dict | None = None) -> subprocess.Popen:
        env = {k: v for k, v in os.environ.items() if k != "SOONER_CONFIG"}
        env.update(SETTINGS_ENV, SOONER_MONGO_URL=store.url, SOONER_DATABASE=store.database_name, **(extra_env or {}))
        process = subprocess.Popen([sys.executable, "-m", "sooner", "worker", "-n", name,
                                    "--cache-dir", str(tmp_path / f"cache-{name}"), *args],
                                   cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        processes.append(process)
        if ready:
            line = process.stdout.readline()
            assert line.startswith(f"worker {name} ready"), line + process.stderr.read()
        return process

    yield spawn
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.wait(10)


def finished(store, run_id: str, timeout: float = 30) -> Run:
    return wait_for(lambda: (r := store.runs.get(run_id)).status in FINISHED and r, timeout,
                    message=f"run {run_id} to finish")


def start(store, job: str, **options) -> str:
    run = RunService(store).queue(job, ManualTrigger(), **options)
    assert run is not None
    return run.id


def test_sigterm_lets_short_runs_finish_cancels_long_ones_and_unregisters(store, spawn_worker):
    deploy_files(store, {"long.sh": "#!/bin/sh\necho started\nsleep 30\n",
                         "short.sh": "#!/bin/sh\necho started\nsleep 0.5\necho finished\n"})
    worker = spawn_worker("w1", "--capacity", "2")
    long_run = start(store, "long.sh")
    short_run = start(store, "short.sh")
    wait_for(lambda: all("started" in store.output.text(r) for r in (long_run, short_run)),
             message="both scripts to start")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(15) == 0
    assert "worker w1 stopped" in worker.stdout.read()
    assert store.runs.get(short_run).status == "succeeded"
    long_doc = store.runs.get(long_run)
    assert (long_doc.status, long_doc.note) == ("cancelled", "worker shut down")
    assert not store.runs.running()
    doc = store.workers.get("w1")
    assert doc.stopped_at is not None and doc.running == ()


def test_two_worker_processes_run_each_of_200_runs_exactly_once(store, spawn_worker, tmp_path):
    ledger = tmp_path / "ledger.txt"
    deploy_files(store, {"once.sh": f"#!/bin/sh\necho \"$SOONER_RUN_ID $SOONER_WORKER\" >> {ledger}\n"
                                    "echo \"run $SOONER_RUN_ID\"\n"})
    run_ids = [start(store, "once.sh") for _ in range(200)]
    workers = [spawn_worker(name, "--capacity", "4") for name in ("a", "b")]
    wait_for(lambda: not store.runs.list(status="queued", limit=1) and not store.runs.running(), 60,
             message="all 200 runs to finish")
    lines = ledger.read_text().split("\n")[:-1]
    counts = Counter(line.split()[0] for line in lines)
    assert set(counts) == set(run_ids) and set(counts.values()) == {1}
    by_worker = Counter(store.runs.get(r).worker for r in run_ids)
    assert set(by_worker) <= {"a", "b"} and sum(by_worker.values()) == 200
    for run_id in run_ids:
        run = store.runs.get(run_id)
        assert run.status == "succeeded"
        stdout = [c["text"] for c in store.output.read(run_id) if c["stream"] == "stdout"]
        assert stdout == [f"run {run_id}\n"]
    print(f"\nruns per worker: {dict(by_worker)}")
    for worker in workers:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(15) == 0


def test_a_second_worker_with_a_live_name_is_refused(store, spawn_worker):
    spawn_worker("same")
    second = spawn_worker("same", ready=False)
    assert second.wait(30) == 1
    assert "a worker named 'same' is already running" in second.stderr.read()


def test_a_worker_killed_with_sigkill_is_restarted_at_once_under_its_name(store, spawn_worker):
    # given a worker whose heartbeat stays fresh for 30 s (its lease), killed with SIGKILL
    first = spawn_worker("again", extra_env={"SOONER_LEASE_S": "30"})
    first.kill()
    first.wait(10)
    assert store.workers.get("again").heartbeat_age(store.clock.now()) < 30
    # when it is restarted under the same name on the same host, then the dead pid does not hold the name
    second = spawn_worker("again", extra_env={"SOONER_LEASE_S": "30"})
    assert store.workers.get("again").pid == second.pid
    second.send_signal(signal.SIGTERM)
    assert second.wait(15) == 0


def test_cancel_command_cancels_queued_and_running_runs(store, spawn_worker, tmp_path):
    deploy_files(store, {"wait.sh": "#!/bin/sh\necho started\nsleep 30\n"})
    queued = start(store, "wait.sh", target="nobody")
    env = {**SETTINGS_ENV, "SOONER_MONGO_URL": store.url, "SOONER_DATABASE": store.database_name}
    result = run_sooner("cancel", queued[:8], cwd=tmp_path, env=env)
    assert result.returncode == 0 and f"cancelled run {store.runs.get(queued).ref} (it had not started)" in result.stdout
    spawn_worker("w1")
    running = start(store, "wait.sh")
    wait_for(lambda: "started" in store.output.text(running), message="the script to start")
    result = run_sooner("cancel", running, cwd=tmp_path, env=env)
    assert result.returncode == 0 and f"asked worker w1 to cancel run {store.runs.get(running).ref}" in result.stdout
    run = finished(store, running, 10)
    assert (run.status, run.note) == ("cancelled", "cancelled by cli")
    again = run_sooner("cancel", running, cwd=tmp_path, env=env)
    assert again.returncode == 1 and "has already finished (cancelled)" in again.stderr


def test_a_pushed_script_runs_on_a_worker_of_the_site(site, clone, tmp_path):
    # given a script pushed through git (the real hooks deploy it, with a helper file and a symlink)
    (clone / "lib").mkdir()
    (clone / "lib" / "greeting.txt").write_text("hello from the tree\n")
    os.symlink("greeting.txt", clone / "lib" / "link.txt")
    script = clone / "hello.sh"
    script.write_text("#!/bin/sh\ncat lib/link.txt\necho \">>> sooner.progress(1, 1)\" >&2\n")
    script.chmod(0o755)
    git("add", "-A", cwd=clone)
    git("commit", "-q", "-m", "add hello", cwd=clone)
    git("push", "-q", "origin", "main", cwd=clone)
    settings = load_settings(site / "config.json", environ={})
    store = open_store(settings)
    try:
        store.jobs.set_enabled("hello.sh", True)
        run_id = start(store, "hello.sh")
        # when the site's worker runs
        env = {**{k: v for k, v in os.environ.items() if k != "SOONER_CONFIG"}, **SETTINGS_ENV}
        worker = subprocess.Popen([sys.executable, "-m", "sooner", "worker", "-n", "site-worker"], cwd=site, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            run = finished(store, run_id)
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(15)
        # then it ran the pushed commit's tree from the site's cache
        assert run.status == "succeeded" and run.progress == Progress(1, 1)
        assert run.commit == git("rev-parse", "HEAD", cwd=clone).stdout.strip()
        assert "hello from the tree\n" in store.output.text(run_id)
        assert list((site / ".sooner" / "cache" / "trees").iterdir())
    finally:
        store.close()
