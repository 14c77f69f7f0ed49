"""The embedded server is signalled only when it is provably this site's, and one data directory has one server.

Real processes throughout: a ``sleep`` whose pid a stale ``db.json`` names,
real ``sooner`` commands, and the real nx-27017 server started through
``sooner.store.nx_server``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from sooner.store.embedded import EXIT_DATA_DIR_IN_USE, EmbeddedServer, ServerRecord, is_server_command

from conftest import run_sooner, wait_for


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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def write_db_json(site: Path, text: str) -> None:
    (site / ".sooner" / "db.json").write_text(text)


def record_naming(site: Path, pid: int) -> str:
    """A db.json as complete as a real one (this data dir, the process's real start time) but naming ``pid``."""
    process = psutil.Process(pid)
    return json.dumps({"pid": pid, "port": free_port(), "create_time": process.create_time(),
                       "boot_time": psutil.boot_time(), "instance": "0" * 32,
                       "data_dir": os.path.realpath(site / ".sooner" / "db"), "started_at": process.create_time()})


@pytest.fixture(autouse=True)
def no_server_left(tmp_path):
    """Kill what a failing test may leave: servers on this test's own data directory (the ``site`` fixture's)."""
    yield
    for pid in nx_servers_of(tmp_path / "site" / ".sooner" / "db"):
        os.kill(pid, signal.SIGKILL)


@pytest.fixture
def sleeper():
    """A process of this test's own that no Sooner command may signal."""
    process = subprocess.Popen(["sleep", "600"])
    yield process
    process.kill()
    process.wait()


# --- a db.json naming a process that is not this site's server ------------------------------------------------

@pytest.mark.parametrize("command, says", [
    (("db", "stop"), "embedded database was not running"),
    (("db", "status"), "embedded database: stopped"),
    (("jobs",), "no jobs yet"),
])
def test_a_db_json_naming_an_unrelated_process_never_signals_it(site, sleeper, command, says):
    # given a db.json naming a live `sleep`, with its real start time and this site's data directory
    write_db_json(site, record_naming(site, sleeper.pid))
    # when a command that manages or needs the database runs
    result = run_sooner(*command, cwd=site)
    # then the sleep is untouched, the record is called stale in one line, and the command works
    assert result.returncode == 0, result.stderr
    assert sleeper.poll() is None
    assert says in result.stdout
    stale = [line for line in result.stderr.splitlines() if f"pid {sleeper.pid}" in line]
    assert len(stale) == 1 and "db.json" in stale[0] and "not this site's embedded database" in stale[0]


def test_a_command_after_a_stale_record_runs_its_own_server_and_leaves_the_process_alone(site, sleeper):
    write_db_json(site, record_naming(site, sleeper.pid))
    assert run_sooner("jobs", cwd=site).returncode == 0
    status = EmbeddedServer(site / ".sooner").status()
    assert status.running and status.pid != sleeper.pid
    assert nx_servers_of(site / ".sooner" / "db") == [status.pid]
    stopped = run_sooner("db", "stop", cwd=site)
    assert "embedded database stopped" in stopped.stdout
    assert sleeper.poll() is None and nx_servers_of(site / ".sooner" / "db") == []


@pytest.mark.parametrize("command, says", [
    (("db", "stop"), "embedded database was not running"),
    (("db", "status"), "embedded database: stopped"),
    (("jobs",), "no jobs yet"),
])
def test_a_db_json_naming_pid_1_is_stale_and_pid_1_is_never_signalled(site, command, says):
    write_db_json(site, record_naming(site, 1))
    result = run_sooner(*command, cwd=site)
    assert result.returncode == 0, result.stderr
    assert says in result.stdout
    assert "pid 1 " in result.stderr and "not this site's embedded database" in result.stderr


@pytest.mark.parametrize("record, problem", [
    ({"pid": -1, "port": 1}, "pid"),
    ({"pid": 0, "port": 1}, "pid"),
    ({"pid": True, "port": 1}, "pid"),
    ({"pid": "12", "port": 1}, "pid"),
    ({"pid": 12}, "port"),
    ({"pid": 12, "port": 70000}, "port"),
    ([], "not a JSON object"),
])
def test_a_record_that_could_name_a_process_group_or_nothing_is_refused(record, problem):
    with pytest.raises(ValueError, match=problem):
        ServerRecord.parse(record)


def test_only_this_data_directory_s_server_command_line_counts(tmp_path):
    data = str(tmp_path / "db")
    server = [sys.executable, "-m", "sooner.store.nx_server", "--instance", "abc", "--data-dir", data, "--port", "1"]
    assert is_server_command(server, data, "abc")
    assert not is_server_command(server, data, "other")
    assert not is_server_command(server, str(tmp_path / "elsewhere"), "abc")
    assert not is_server_command(["sleep", "600", "sooner.store.nx_server", "--data-dir", data], data, "abc")
    assert not is_server_command(["/bin/sh", "-c", " ".join(server)], data, "abc")


# --- a corrupt or missing db.json while the server runs ----------------------------------------------------------

@pytest.mark.parametrize("text, problem", [
    ('{"pid": ', "not valid JSON"),
    ("[1, 2]", "not a JSON object"),
    ('{"pid": "x", "port": 1}', "pid"),
    (None, None),  # removed
])
def test_a_corrupt_db_json_while_the_server_runs_starts_no_second_server(site, text, problem):
    # given a running server whose db.json is then damaged (or removed)
    data_dir = site / ".sooner" / "db"
    assert run_sooner("db", "start", cwd=site).returncode == 0
    running = EmbeddedServer(site / ".sooner").status().pid
    if text is None:
        (site / ".sooner" / "db.json").unlink()
    else:
        write_db_json(site, text)
    # when commands run
    result = run_sooner("jobs", cwd=site)
    # then they use the running server, say what was wrong with the file, and no second server exists
    assert result.returncode == 0, result.stderr
    if problem:
        line = next(line for line in result.stderr.splitlines() if "db.json" in line)
        assert problem in line
    assert nx_servers_of(data_dir) == [running]
    assert f"running (pid {running}," in run_sooner("db", "status", cwd=site).stdout
    assert "embedded database stopped" in run_sooner("db", "stop", cwd=site).stdout
    assert nx_servers_of(data_dir) == []


def test_the_server_refuses_a_data_directory_that_another_server_holds(site, tmp_path):
    # given a running server
    server = EmbeddedServer(site / ".sooner")
    server.ensure_running()
    holder = server.status().pid
    # when a second server is started by hand on the same data directory (own port, log and pid file)
    second = subprocess.run(
        [sys.executable, "-m", "sooner.store.nx_server", "--instance", "f" * 32,
         "--data-dir", str(site / ".sooner" / "db"), "--host", "127.0.0.1", "--port", str(free_port()),
         "--log-file", str(tmp_path / "second.log"), "--pid-file", str(tmp_path / "second.pid")],
        capture_output=True, text=True, timeout=60)
    # then it refuses, naming the holder, and the first one goes on alone
    assert second.returncode == EXIT_DATA_DIR_IN_USE, second.stderr
    assert f"in use by the embedded database with pid {holder}" in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1
    assert nx_servers_of(site / ".sooner" / "db") == [holder]
    assert server.status().running


def test_a_server_that_stopped_answering_is_replaced(site):
    # given our own running server, frozen
    server = EmbeddedServer(site / ".sooner")
    server.ensure_running()
    frozen = server.status().pid
    os.kill(frozen, signal.SIGSTOP)
    try:
        # when a command needs the database
        result = run_sooner("jobs", cwd=site)
        # then the frozen server is killed (its lock goes with it) and a new one serves
        assert result.returncode == 0, result.stderr
        assert "does not answer" in result.stderr
        wait_for(lambda: not psutil.pid_exists(frozen) or psutil.Process(frozen).status() == psutil.STATUS_ZOMBIE,
                 message="the frozen server to be gone")
        fresh = server.status().pid
        assert fresh != frozen and nx_servers_of(site / ".sooner" / "db") == [fresh]
    finally:
        if psutil.pid_exists(frozen) and frozen in nx_servers_of(site / ".sooner" / "db"):
            os.kill(frozen, signal.SIGKILL)
