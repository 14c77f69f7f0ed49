"""The launcher and its per-run supervisors, driven directly (no worker): what starts, what dies with what.

Real processes throughout: `Launcher` forks real supervisors, which start real
shell scripts; every process is checked by pid and create time.
"""

from __future__ import annotations

import os
import resource
import select
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from conftest import ESCAPING, alive, processes_of, wait_for
from sooner.worker.supervise import IDLE_NAME, Launcher, Supervised, stop_recorded, supervisor_name

@pytest.fixture
def launcher() -> Iterator[Launcher]:
    launcher = Launcher()
    yield launcher
    launcher.close()


@pytest.fixture
def run_env(tmp_path) -> Iterator[dict[str, str]]:
    """A run's environment, marked so the test can find (and at teardown kill) every process of it."""
    env = {"PATH": os.environ["PATH"], "SOONER_RUN_ID": f"test-supervise-{os.getpid()}-{time.monotonic_ns()}"}
    yield env
    for pid, created in processes_of(env["SOONER_RUN_ID"]).items():
        if alive(pid, created):
            psutil.Process(pid).kill()


def script(tmp_path: Path, text: str, name: str = "script.sh") -> str:
    path = tmp_path / name
    path.write_text(text)
    path.chmod(0o755)
    return str(path)


def readable(fd: int, timeout: float) -> bool:
    poller = select.poll()  # not select(): the descriptor may be 1024 or more (see the test below)
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(int(timeout * 1000)))


def read_line(fd: int, timeout: float = 10.0) -> bytes:
    data, deadline = b"", time.monotonic() + timeout
    while b"\n" not in data and time.monotonic() < deadline:
        if readable(fd, 0.1):
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            data += chunk
    return data


def wait_ended(supervised: Supervised, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not supervised.status_closed and time.monotonic() < deadline:
        if readable(supervised.status_fd, 0.1):
            supervised.read_status()
    assert supervised.status_closed, "the supervisor did not exit"


def test_a_script_starts_in_its_own_session_in_its_directory_with_stdin_empty(launcher, tmp_path, run_env):
    work = tmp_path / "work"
    work.mkdir()
    path = script(tmp_path, '#!/bin/sh\nread line; echo "read=$? cwd=$(pwd)"; exec sleep 30\n')
    supervised = launcher.start([path], cwd=str(work), env=run_env)
    try:
        line = read_line(supervised.stdout).decode()
        session = os.getsid(supervised.script_pid)
        supervised.kill()
        wait_ended(supervised)
    finally:
        supervised.close()
    assert line == f"read=1 cwd={work}\n"
    assert session == supervised.script_pid
    assert supervised.returncode == -signal.SIGKILL


@pytest.mark.parametrize("problem", ["missing", "not executable", "no directory"])
def test_a_script_that_cannot_start_is_an_os_error_with_the_reason(launcher, tmp_path, run_env, problem):
    path = script(tmp_path, "#!/bin/sh\nexit 0\n")
    cwd = str(tmp_path)
    if problem == "missing":
        path = str(tmp_path / "nowhere.sh")
    elif problem == "not executable":
        os.chmod(path, 0o644)
    else:
        cwd = str(tmp_path / "gone")
    with pytest.raises(OSError) as raised:
        launcher.start([path], cwd=cwd, env=run_env)
    assert raised.value.errno in {"missing": (2,), "not executable": (13,), "no directory": (2,)}[problem]
    # The launcher still serves the next run.
    supervised = launcher.start([script(tmp_path, "#!/bin/sh\nexit 3\n", "ok.sh")], cwd=str(tmp_path), env=run_env)
    wait_ended(supervised)
    supervised.close()
    assert supervised.returncode == 3


def test_a_killed_supervisor_takes_the_script_and_all_it_started_with_it(launcher, tmp_path, run_env):
    # A supervisor killed by anyone (the OOM killer, a person) must not leave its run's tree
    # behind: the script, and the descendants that left its group, all die within seconds.
    supervised = launcher.start([script(tmp_path, ESCAPING)], cwd=str(tmp_path), env=run_env)
    try:
        assert read_line(supervised.stdout) == b"started\n"
        run_id = run_env["SOONER_RUN_ID"]
        wait_for(lambda: len(processes_of(run_id)) >= 6, message="the script and its three sleeps")
        tree = processes_of(run_id)
        os.kill(supervised.supervisor_pid, signal.SIGKILL)
        wait_for(lambda: not any(alive(pid, created) for pid, created in tree.items()), timeout=10,
                 message="every process of the run to die with its supervisor")
    finally:
        supervised.close()


def test_the_workers_death_kills_the_whole_tree(launcher, tmp_path, run_env):
    # The control pipe's EOF is how a supervisor learns its worker died, however it died.
    supervised = launcher.start([script(tmp_path, ESCAPING)], cwd=str(tmp_path), env=run_env)
    assert read_line(supervised.stdout) == b"started\n"
    run_id = run_env["SOONER_RUN_ID"]
    wait_for(lambda: len(processes_of(run_id)) >= 6, message="the script and its three sleeps")
    tree = processes_of(run_id)
    os.close(supervised.control)
    wait_for(lambda: not any(alive(pid, created) for pid, created in tree.items()), timeout=10,
             message="every process of the run to die when the control pipe closes")
    os.close(supervised.stdout)
    os.close(supervised.stderr)
    os.close(supervised.status_fd)


def test_the_usage_of_the_tree_is_reported_when_it_is_gone(launcher, tmp_path, run_env):
    busy = script(tmp_path, "#!/bin/sh\ni=0\nwhile [ $i -lt 20000 ]; do i=$((i+1)); done\n")
    supervised = launcher.start([busy], cwd=str(tmp_path), env=run_env)
    wait_ended(supervised)
    supervised.close()
    assert supervised.returncode == 0
    assert supervised.reported_usage is not None
    cpu_s, max_rss = supervised.reported_usage
    assert cpu_s > 0 and max_rss > 0


# -- supervisors serve one run after another -----------------------------------------------------
def comm(pid: int) -> str:
    with open(f"/proc/{pid}/comm") as name:
        return name.read().strip()


def released(supervised: Supervised) -> None:
    """Close the run's pipes and wait until its supervisor is idle (the launcher may then hand it a run)."""
    supervised.close()
    wait_for(lambda: comm(supervised.supervisor_pid) == IDLE_NAME, message="the supervisor to be idle")


def test_a_released_supervisor_serves_the_next_run_under_that_runs_name(launcher, tmp_path, run_env):
    path = script(tmp_path, "#!/bin/sh\nread line\nexec sleep 30\n")
    first = launcher.start([path], cwd=str(tmp_path), env={**run_env, "SOONER_RUN_ID": "run-a"})
    assert comm(first.supervisor_pid) == supervisor_name("run-a")
    first.kill()
    wait_ended(first)
    released(first)
    second = launcher.start([path], cwd=str(tmp_path), env={**run_env, "SOONER_RUN_ID": "run-b"})
    try:
        assert second.supervisor_pid == first.supervisor_pid
        assert comm(second.supervisor_pid) == supervisor_name("run-b") != supervisor_name("run-a")
    finally:
        second.kill()
        wait_ended(second)
        second.close()


def test_a_supervisor_not_released_yet_serves_no_other_run(launcher, tmp_path, run_env):
    # Until the worker closes a run's pipes it may still signal the run's tree, so the tree (and
    # the supervisor's pid) must stay that run's.
    quick = script(tmp_path, "#!/bin/sh\nexit 0\n", "quick.sh")
    first = launcher.start([quick], cwd=str(tmp_path), env=run_env)
    wait_ended(first)
    second = launcher.start([quick], cwd=str(tmp_path), env=run_env)
    wait_ended(second)
    first.close()
    second.close()
    assert second.supervisor_pid != first.supervisor_pid


def test_each_run_reports_its_own_usage_not_its_supervisors_total(launcher, tmp_path, run_env):
    busy = script(tmp_path, "#!/bin/sh\ni=0\nwhile [ $i -lt 100000 ]; do i=$((i+1)); done\n", "busy.sh")
    quick = script(tmp_path, "#!/bin/sh\nexit 0\n", "quick.sh")
    reports = []
    for path in (busy, quick):
        supervised = launcher.start([path], cwd=str(tmp_path), env=run_env)
        wait_ended(supervised)
        released(supervised)
        reports.append((supervised.supervisor_pid, supervised.reported_usage))
    (busy_pid, (busy_cpu, _)), (quick_pid, (quick_cpu, _)) = reports
    assert busy_pid == quick_pid  # one supervisor served both
    assert busy_cpu > 0.05 and quick_cpu < busy_cpu / 2, reports


def test_a_later_worker_never_kills_a_supervisor_that_moved_on_to_another_run(launcher, tmp_path, run_env):
    path = script(tmp_path, "#!/bin/sh\nread line\nexec sleep 30\n")
    earlier = launcher.start([path], cwd=str(tmp_path), env={**run_env, "SOONER_RUN_ID": "run-a"})
    recorded = (earlier.supervisor_pid, earlier.supervisor_started_at)
    earlier.kill()
    wait_ended(earlier)
    released(earlier)
    now = launcher.start([path], cwd=str(tmp_path), env={**run_env, "SOONER_RUN_ID": "run-b"})
    try:
        assert now.supervisor_pid == recorded[0]
        script_started = psutil.Process(now.script_pid).create_time()
        killed, _ = stop_recorded("run-a", recorded, (None, None), None)
        assert killed == [] and alive(now.script_pid, script_started)
        killed, gone = stop_recorded("run-b", (now.supervisor_pid, now.supervisor_started_at),
                                     (now.script_pid, script_started), now.script_pid)
        assert (set(killed), gone) == ({now.supervisor_pid, now.script_pid}, True)
        assert not alive(now.script_pid, script_started)
    finally:
        now.close()


def test_idle_supervisors_are_let_go_and_go_with_the_launcher(tmp_path, run_env):
    quick = script(tmp_path, "#!/bin/sh\nexit 0\n", "quick.sh")
    brief = Launcher(keep_idle_s=0.3)
    try:
        supervised = brief.start([quick], cwd=str(tmp_path), env=run_env)
        wait_ended(supervised)
        supervised.close()
        pid, created = supervised.supervisor_pid, supervised.supervisor_started_at
        wait_for(lambda: not alive(pid, created), timeout=10, message="an idle supervisor to be let go")
    finally:
        brief.close()
    kept = Launcher()
    try:
        runs = [kept.start([quick], cwd=str(tmp_path), env=run_env) for _ in range(3)]  # three at once
        for supervised in runs:
            wait_ended(supervised)
            supervised.close()
        pids = [(supervised.supervisor_pid, supervised.supervisor_started_at) for supervised in runs]
        assert len(set(pids)) == 3
        # Released, they wait for the next run (the launcher keeps idle ones for KEEP_IDLE_S).
        assert all(alive(*pid) for pid in pids)
    finally:
        kept.close()
    wait_for(lambda: not any(alive(*pid) for pid in pids), timeout=10,
             message="idle supervisors to exit with their launcher")


def test_a_killed_launcher_leaves_running_runs_alone_and_the_next_start_gets_a_new_one(launcher, tmp_path, run_env):
    path = script(tmp_path, "#!/bin/sh\nread line\nexec sleep 30\n")
    running = launcher.start([path], cwd=str(tmp_path), env=run_env)
    assert launcher._process is not None
    old_launcher = launcher._process.pid
    os.kill(old_launcher, signal.SIGKILL)
    wait_for(lambda: launcher._process is not None and launcher._process.poll() is not None,
             message="the launcher to die")
    # The run goes on under its supervisor ...
    assert alive(running.script_pid, psutil.Process(running.script_pid).create_time())
    following = launcher.start([script(tmp_path, "#!/bin/sh\nexit 4\n", "next.sh")], cwd=str(tmp_path),
                               env=run_env)
    wait_ended(following)
    following.close()
    assert following.returncode == 4 and launcher._process.pid != old_launcher
    # ... and ends as usual; released, its supervisor (which has no launcher to go back to) exits.
    running.kill()
    wait_ended(running)
    supervisor = (running.supervisor_pid, running.supervisor_started_at)
    running.close()
    assert running.returncode == -signal.SIGKILL and running.reported_usage is not None
    wait_for(lambda: not alive(*supervisor), message="the orphaned supervisor to exit once released")


def test_a_worker_with_more_than_a_thousand_descriptors_open_still_starts_runs(launcher, tmp_path, run_env):
    # select() refuses descriptors from 1024 up: a busy worker's next pipes are above that.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1400:
        pytest.skip(f"needs 1,400 open files; the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1400), hard))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        supervised = launcher.start([script(tmp_path, "#!/bin/sh\necho hi\n")], cwd=str(tmp_path), env=run_env)
        try:
            assert supervised.status_fd >= 1024
            assert read_line(supervised.stdout) == b"hi\n"
            wait_ended(supervised)
        finally:
            supervised.close()
        assert supervised.returncode == 0
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
