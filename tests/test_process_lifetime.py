"""A run's processes live exactly as long as the run: with their worker, through cancel, timeout and memory limits.

Real scripts in real subprocesses, real `sooner worker` processes killed with
SIGKILL, and every process checked by pid *and* create time (a pid alone may
have been recycled). Zombies count as gone: this machine's init does not reap
orphans.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import psutil
import pytest

from conftest import ESCAPING, alive, processes_of, run_sooner, wait_for
from sooner.config import Settings, load_settings
from sooner.errors import WorkerError
from sooner.model import FINISHED, ManualTrigger, Run, RunStatus
from sooner.runs.service import RunService
from sooner.store import open_store
from sooner.worker.loop import Worker
from sooner.worker.rpc import RpcServer
from sooner.worker.testing import deploy_files
from test_worker_process import SETTINGS_ENV, spawn_worker  # noqa: F401  (a fixture)

PY = f"#!{sys.executable}\n"
HOST = socket.gethostname()
# Test-only switch (see sooner.worker.supervise): scripts do not notice their worker's death.
KEEP_ORPHANS_ENV = "SOONER_TEST_KEEP_ORPHANS"


# -- helpers -------------------------------------------------------------------------------
def all_gone(processes: dict[int, float]) -> bool:
    return not any(alive(pid, created) for pid, created in processes.items())


@pytest.fixture
def reaper():
    """Kill whatever a failed test leaves behind (only processes verified to belong to its runs)."""
    run_ids: list[str] = []
    yield run_ids.append
    for run_id in run_ids:
        for pid, created in processes_of(run_id).items():
            if alive(pid, created):
                psutil.Process(pid).kill()


@pytest.fixture
def settings(embedded_store) -> Settings:
    return Settings(mongo_url=embedded_store.url, database=embedded_store.database_name, heartbeat_s=0.2, lease_s=2.0,
                    cancel_grace_s=1.0, shutdown_grace_s=2.0, output_flush_ms=50, outage_grace_s=0.0)


@pytest.fixture
def store(embedded_store):
    return embedded_store


@pytest.fixture
def service(store, settings) -> RunService:
    return RunService(store, settings)


@pytest.fixture
def make_worker(store, settings, start_worker, tmp_path):
    """A registered in-process worker whose run_forever loop runs on a thread; stopped at teardown."""
    def make(name: str = "w1", start: bool = True, **options) -> Worker:
        return start_worker(store, settings, name, 4, start=start, **{"cache": tmp_path / "cache", **options})
    return make


def start(store, job: str) -> str:
    run = RunService(store).queue(job, ManualTrigger())
    assert run is not None
    return run.id


def finished(store, run_id: str, timeout: float = 20) -> Run:
    return wait_for(lambda: (r := store.runs.get(run_id)).status in FINISHED and r, timeout,
                    message=f"run {run_id} to finish")


def text_of(store, run_id: str) -> str:
    return "".join(chunk["text"] for chunk in store.output.read(run_id))


def sleeps_of(run_id: str) -> int:
    count = 0
    for pid in processes_of(run_id):
        try:
            count += psutil.Process(pid).name() == "sleep"
        except psutil.Error:
            pass
    return count


# -- the tree dies with the run --------------------------------------------------------------
@pytest.mark.parametrize("ending", ["cancel", "timeout"])
def test_cancel_and_timeout_kill_grandchildren_that_left_the_process_group(store, make_worker, service, reaper,
                                                                           ending):
    # given a script whose descendants left its process group (setsid, a double fork) and a plain grandchild
    deploy_files(store, {"escape.sh": ESCAPING}, settings={"escape.sh": {"timeout_s": 3}} if ending == "timeout" else None)
    make_worker()
    run_id = start(store, "escape.sh")
    reaper(run_id)
    wait_for(lambda: sleeps_of(run_id) >= 3, message="the script's sleeps to start")
    tree = processes_of(run_id)
    script_pid = wait_for(lambda: store.runs.get(run_id).pid, message="the run's start record")
    assert any(os.getsid(pid) != os.getsid(script_pid) for pid in tree), "some process left the script's session"
    # when the run is cancelled or times out
    if ending == "cancel":
        service.cancel(run_id, by="alice")
    run = finished(store, run_id)
    # then every process of its tree is gone
    assert run.status == (RunStatus.CANCELLED if ending == "cancel" else RunStatus.TIMED_OUT)
    wait_for(lambda: all_gone(tree), 5, message=f"every process of {sorted(tree)} to be gone")


def test_processes_left_behind_after_a_normal_exit_are_killed_after_the_linger(store, make_worker, reaper):
    # given a script that exits 0 leaving a detached sleep that holds none of its output
    deploy_files(store, {"daemon.sh": "#!/bin/sh\nsetsid sleep 600 >/dev/null 2>&1 </dev/null &\n"
                                      "echo \"left $!\"\n"})
    make_worker()
    run_id = start(store, "daemon.sh")
    reaper(run_id)
    run = finished(store, run_id)
    # then the run succeeded and the detached sleep was killed, with a note saying so
    assert run.status == RunStatus.SUCCEEDED, text_of(store, run_id)
    left = int(re.search(r"left (\d+)", text_of(store, run_id)).group(1))
    assert not processes_of(run_id)
    assert not psutil.pid_exists(left) or psutil.Process(left).status() == psutil.STATUS_ZOMBIE
    assert "left 1 process running; killing it" in text_of(store, run_id)


def test_a_run_whose_tree_outgrows_its_memory_limit_is_killed_with_the_reason(store, make_worker, reaper):
    # given a job limited to 150 MB whose two children hold about 100 MB each (neither alone is over)
    hold = f"{sys.executable} -c 'import time; b = b\"x\" * (100 << 20); time.sleep(600)'"
    deploy_files(store, {"hungry.sh": f"#!/bin/sh\n{hold} &\n{hold} &\necho started\nwait\n"},
                 settings={"hungry.sh": {"memory_limit_mb": 150}})
    make_worker()
    # when it runs
    run_id = start(store, "hungry.sh")
    reaper(run_id)
    run = finished(store, run_id, 30)
    # then it failed with how much it used and its limit, and nothing of it is left
    assert run.status == RunStatus.FAILED, text_of(store, run_id)
    used = re.fullmatch(r"killed: memory (\d+) MB over the job's limit of 150 MB", run.note)
    assert used and 150 < int(used.group(1)) < 400, run.note
    assert f"sooner: {run.note}; sending SIGTERM" in text_of(store, run_id)
    wait_for(lambda: not processes_of(run_id), 5, message="the run's processes to be gone")


def test_the_memory_limit_is_a_job_setting_of_the_cli(site):
    store = open_store(load_settings(site / "config.json", environ={}))
    try:
        store.jobs.record_deployed("big.sh", commit="0123456789abcdef", blob="b1")
        result = run_sooner("job", "set", "big.sh", "--memory-limit", "500", cwd=site)
        assert result.returncode == 0 and "memory_limit_mb=500" in result.stdout, result.stderr
        assert store.jobs.get("big.sh").memory_limit_mb == 500
        cleared = run_sooner("job", "set", "big.sh", "--memory-limit", "0", cwd=site)
        assert cleared.returncode == 0 and "memory_limit_mb=none" in cleared.stdout, cleared.stderr
        assert store.jobs.get("big.sh").memory_limit_mb is None
        bad = run_sooner("job", "set", "big.sh", "--memory-limit", "-5", cwd=site)
        assert bad.returncode == 1 and "memory_limit_mb: must not be negative" in bad.stderr
    finally:
        store.close()


# -- scripts die with their worker --------------------------------------------------------------
def test_scripts_die_within_seconds_when_their_worker_is_killed(store, spawn_worker, tmp_path, reaper):  # noqa: F811
    # given a real worker running a silent script with a descendant that left its group
    socket_file = tmp_path / "socket.txt"
    deploy_files(store, {"silent.sh": f"#!/bin/sh\necho \"$1\" > {socket_file}\nsetsid sleep 600 &\nexec sleep 600\n"})
    worker = spawn_worker("w1")
    run_id = start(store, "silent.sh")
    reaper(run_id)
    wait_for(lambda: sleeps_of(run_id) == 2, message="the silent script and its sleep")
    tree = processes_of(run_id)
    rpc_dir = Path(wait_for(lambda: socket_file.exists() and socket_file.read_text().strip(),
                            message="the socket path")).parent
    # when the worker is killed with SIGKILL
    worker.kill()
    worker.wait(10)
    # then the script, its escaped sleep and the run's socket directory go with it
    wait_for(lambda: all_gone(tree), 5, message=f"every process of {sorted(tree)} to die with the worker")
    wait_for(lambda: not rpc_dir.exists(), 5, message=f"{rpc_dir} to be removed")


def test_a_worker_restarted_at_once_kills_what_its_killed_predecessor_left(store, spawn_worker, tmp_path,  # noqa: F811
                                                                             reaper):
    # given a worker whose scripts do not notice its death (the test-only switch), running a silent script
    env = {KEEP_ORPHANS_ENV: "1", "SOONER_LEASE_S": "30"}
    socket_file = tmp_path / "socket.txt"
    deploy_files(store, {"silent.sh": f"#!/bin/sh\necho \"$1\" > {socket_file}\nsetsid sleep 600 &\nexec sleep 600\n"})
    worker = spawn_worker("w1", extra_env=env)
    run_id = start(store, "silent.sh")
    reaper(run_id)
    wait_for(lambda: sleeps_of(run_id) == 2, message="the silent script and its sleep")
    tree = processes_of(run_id)
    rpc_dir = Path(wait_for(lambda: socket_file.exists() and socket_file.read_text().strip(),
                            message="the socket path")).parent
    # (its start record is stored: before that, START_RECORD_S after the spawn, only the supervisor
    # knows the tree, and the switch turns off what it does at the worker's death)
    wait_for(lambda: store.runs.get(run_id).pid_started_at, message="the run's start record")
    # when the worker is killed with SIGKILL, its scripts live on (that is what the switch is for)
    worker.kill()
    worker.wait(10)
    assert not all_gone(tree) and rpc_dir.exists()
    # when it is restarted under its name at once (its heartbeat is still fresh: lease 30 s)
    spawn_worker("w1", extra_env=env)
    # then the new worker kills the old run's processes, ends it lost, and removes its socket directory
    wait_for(lambda: all_gone(tree), 10, message=f"every process of {sorted(tree)} to be killed by the new worker")
    run = finished(store, run_id, 10)
    assert (run.status, run.note, run.process_gone) == (RunStatus.LOST, "worker w1 restarted while it ran", True)
    assert (run.host, run.pid_started_at is not None, run.supervisor_pid is not None) == (HOST, True, True)
    wait_for(lambda: not rpc_dir.exists(), 5, message=f"{rpc_dir} to be removed")


def test_a_starting_worker_leaves_recycled_or_unmarked_pids_alone(store, settings, service, tmp_path):
    # given three lost runs of this host: one whose pid now belongs to another process (another create
    # time), one whose pid and create time match a process without the run's id, and one that verifies
    deploy_files(store, {"job.sh": "#!/bin/sh\n"})
    env = {k: v for k, v in os.environ.items() if k != "SOONER_RUN_ID"}
    runs = [service.queue("job.sh", ManualTrigger()) for _ in range(3)]
    sleeps = [subprocess.Popen(["sleep", "600"], start_new_session=True,
                               env={**env, "SOONER_RUN_ID": runs[2].id} if i == 2 else env) for i in range(3)]
    try:
        for i, (run, sleep) in enumerate(zip(runs, sleeps)):
            assert service.take(run.id, "gone", settings.lease_s)
            created = psutil.Process(sleep.pid).create_time()
            store.runs.mark_started(run.id, pid=sleep.pid, commit=None, host=HOST, pgid=sleep.pid,
                                    pid_started_at=created - 1000 if i == 0 else created)
            service.finish(run.id, RunStatus.LOST, note="lost: test")
        # when a worker starts on this host
        Worker(store, settings, "new", cache=tmp_path / "cache").register()
        # then only the verified process was killed
        assert [sleep.poll() for sleep in sleeps[:2]] == [None, None]
        assert sleeps[2].wait(5) == -signal.SIGKILL
        # and the runs whose recorded process is certainly gone say so
        assert [store.runs.get(run.id).process_gone for run in runs] == [True, False, True]
    finally:
        for sleep in sleeps:
            sleep.kill()
            sleep.wait()


# -- retries wait for the old process ------------------------------------------------------------
def _lost_run(store, service, fake_clock, lease_s: float, **started) -> Run:
    deploy_files(store, {"flaky.sh": "#!/bin/sh\n"}, settings={"flaky.sh": {"retry": {"attempts": 1, "delay_s": 1}}})
    run = service.queue("flaky.sh", ManualTrigger())
    assert service.take(run.id, "w1", lease_s)
    store.runs.mark_started(run.id, pid=4242, commit=None, host="elsewhere", pid_started_at=1.0, pgid=4242)
    if started.get("gone"):
        store.runs.mark_process_gone(run.id)
    fake_clock.advance(lease_s + 0.001)
    return run


def test_the_retry_of_a_lost_run_waits_for_the_old_process_to_be_killed(clocked_store, make_service, fake_clock):
    # given a lost run (lease expired) whose job retries after 1 s
    service = make_service(clocked_store, cancel_grace_s=10, lease_s=30, outage_grace_s=30)  # outlives it by 0 s
    run = _lost_run(clocked_store, service, fake_clock, 30)
    # when its lease expiry is noticed
    lost = service.expire_leases()
    # then the retry waits the cancel grace a worker that lost its lease needs to kill its copy, not just 1 s
    assert [r.id for r in lost] == [run.id]
    retry = clocked_store.runs.list(status="queued")[0]
    assert retry.not_before == fake_clock.now() + timedelta(seconds=10)
    assert "in 10s" in clocked_store.runs.get(run.id).note


def test_the_retry_of_a_lost_run_whose_process_is_known_dead_starts_after_its_delay(clocked_store, make_service,
                                                                                     fake_clock):
    service = make_service(clocked_store, cancel_grace_s=10, lease_s=30)
    run = _lost_run(clocked_store, service, fake_clock, 30, gone=True)
    service.expire_leases()
    retry = clocked_store.runs.list(status="queued")[0]
    assert (retry.trigger.source, retry.not_before) == (run.id, fake_clock.now() + timedelta(seconds=1))


def test_a_worker_that_cannot_renew_its_lease_stops_its_script_by_the_lease_expiry(store, make_worker, settings,
                                                                                     monkeypatch, reaper):
    # given a worker running a script, whose database then refuses its lease renewals
    deploy_files(store, {"wait.sh": "#!/bin/sh\necho started\nexec sleep 600\n"})
    worker = make_worker()
    run_id = start(store, "wait.sh")
    reaper(run_id)
    wait_for(lambda: "started" in text_of(store, run_id), message="the script to start")
    tree = processes_of(run_id)
    from sooner.errors import StoreError

    def refuse(*args, **kwargs):
        raise StoreError("renewals refused (injected)")
    cut_off = time.monotonic()
    monkeypatch.setattr(worker.store.runs, "renew_leases", refuse)
    # then the script is killed by the time its lease (2 s) expires plus the cancel grace (1 s)
    wait_for(lambda: all_gone(tree), settings.lease_s + settings.cancel_grace_s + 2, message="the script to be fenced")
    assert time.monotonic() - cut_off < settings.lease_s + settings.cancel_grace_s + 1
    run = finished(store, run_id)
    assert run.status == RunStatus.LOST and "could not renew its lease" in run.note


# -- names and leftovers of a killed worker ------------------------------------------------------
def test_a_name_held_by_a_dead_process_on_this_host_is_taken_despite_a_fresh_heartbeat(store, settings):
    dead = subprocess.Popen(["true"])
    dead.wait()
    live = psutil.Process()
    holders = {"dead-here": (HOST, dead.pid), "alive-here": (HOST, live.pid), "dead-elsewhere": ("other", dead.pid)}
    for name, (host, pid) in holders.items():
        store.workers.register(name, instance="old", host=host, pid=pid, capacity=1, tags=[], version="0",
                               stale_after_s=settings.lease_s)

    def register(name: str) -> None:
        Worker(store, settings, name, cache=Path("/nonexistent")).register()

    register("dead-here")
    assert store.workers.get("dead-here").pid == os.getpid()
    for name in ("alive-here", "dead-elsewhere"):
        with pytest.raises(WorkerError, match=f"a worker named '{name}' is already running"):
            register(name)


def test_a_starting_worker_removes_socket_directories_no_live_run_uses(store, settings, tmp_path, short_tmp):
    parent = short_tmp / "sockets"
    parent.mkdir()
    # a directory whose server is gone (its socket file is left), one in use, one of another user
    stale = parent / "sooner-rpc-stale"
    stale.mkdir(mode=0o700)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(stale / "sooner.sock"))
    listener.close()
    foreign = parent / "sooner-rpc-foreign"
    foreign.mkdir(mode=0o700)
    (foreign / "sooner.sock").write_text("")
    os.chown(foreign, 12345, 12345)
    unrelated = parent / "other-dir"
    unrelated.mkdir()
    with RpcServer(lambda call: None, str(parent)) as live:
        worker = Worker(store, settings, "w1", cache=tmp_path / "cache")
        worker.runner.socket_dir = str(parent)
        worker.register()
        assert sorted(p.name for p in parent.iterdir()) == sorted(
            [Path(live.directory).name, "sooner-rpc-foreign", "other-dir"])
