"""An embedded server started on demand stops itself when no client is left; `db start` and `up` keep theirs.

Real servers throughout: the idle limit is made short through the
``embedded_idle_stop_s`` setting, and a server's end is awaited on its pid.
"""

from __future__ import annotations

import time
from pathlib import Path

import psutil

from conftest import run_sooner, wait_for
from sooner.config import load_settings
from sooner.store import open_store
from sooner.store.embedded import EmbeddedServer
from sooner.store.nx_server import IdleWatch

SHORT = 0.5  # seconds without clients before an on-demand server stops


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def still_running_after(pid: int, seconds: float) -> bool:
    """Watch the server for ``seconds`` (several idle limits); False as soon as it is gone."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if gone(pid):
            return False
        time.sleep(0.05)
    return not gone(pid)


def short_idle(site: Path) -> dict[str, str]:
    return {"SOONER_EMBEDDED_IDLE_STOP_S": str(SHORT)}


def test_an_on_demand_server_stops_once_its_last_client_disconnects(site):
    # given a server started on demand by a store, which stays connected
    settings = load_settings(site / "config.json", environ=short_idle(site))
    store = open_store(settings)
    pid = EmbeddedServer(settings.state_dir).status().pid
    assert pid is not None
    # then it keeps running as long as the client is connected
    assert still_running_after(pid, 6 * SHORT)
    store.jobs.record_deployed("kept.sh", commit="c1", blob="b1")
    # when the client disconnects
    store.close()
    # then the server stops by itself, cleanly
    wait_for(lambda: gone(pid), timeout=20, message="the idle server to stop")
    assert "no client for 0.5 s; stopping" in (site / ".sooner" / "db.log").read_text()
    # and the next command starts a new one without complaint, with the data kept
    result = run_sooner("jobs", cwd=site)
    assert result.returncode == 0 and "kept.sh" in result.stdout, result.stderr
    assert "warning" not in result.stderr.lower()


def test_a_one_shot_command_leaves_no_server_behind(site):
    result = run_sooner("jobs", cwd=site, env=short_idle(site))
    assert result.returncode == 0, result.stderr
    status = EmbeddedServer(site / ".sooner").status()
    if status.running:  # it may be gone already
        wait_for(lambda: gone(status.pid), timeout=20, message="the idle server to stop")


def test_db_start_keeps_the_server_running_without_clients(site):
    # given a server started by `sooner db start` with the same short idle limit
    result = run_sooner("db", "start", cwd=site, env=short_idle(site))
    assert result.returncode == 0 and "kept running until `sooner db stop`" in result.stdout, result.stderr
    status = EmbeddedServer(site / ".sooner").status()
    # then it runs on with no client at all, and says so
    assert still_running_after(status.pid, 6 * SHORT)
    assert "kept running until `sooner db stop`" in run_sooner("db", "status", cwd=site).stdout
    # and `sooner db stop` stops it
    assert "embedded database stopped" in run_sooner("db", "stop", cwd=site).stdout
    assert gone(status.pid)


def test_db_start_keeps_a_server_that_was_started_on_demand(site):
    server = EmbeddedServer(site / ".sooner", idle_stop_s=SHORT)
    server.ensure_running()
    pid = server.status().pid
    assert server.status().idle_stop_s == SHORT and not server.status().kept
    server.ensure_running(keep=True)
    assert server.status().pid == pid and server.status().kept
    assert still_running_after(pid, 6 * SHORT)


def test_db_status_says_when_an_on_demand_server_stops(site):
    EmbeddedServer(site / ".sooner", idle_stop_s=60).ensure_running()
    out = run_sooner("db", "status", cwd=site).stdout
    assert "started on demand, stops after 60 s without clients" in out


def test_a_keep_file_left_by_an_earlier_server_keeps_no_later_one(site):
    kept = EmbeddedServer(site / ".sooner", idle_stop_s=SHORT)
    kept.ensure_running(keep=True)
    first = kept.status().pid
    psutil.Process(first).kill()  # as if `sooner up` and its database were killed: db.keep stays behind
    wait_for(lambda: gone(first), message="the server to die")
    stale = (site / ".sooner" / "db.keep").read_text()
    later = EmbeddedServer(site / ".sooner", idle_stop_s=SHORT)
    later.ensure_running()
    (site / ".sooner" / "db.keep").write_text(stale)  # still there, naming the dead server
    pid = later.status().pid
    assert pid != first and not later.status().kept
    wait_for(lambda: gone(pid), timeout=20, message="the new on-demand server to stop when idle")


def test_idle_stop_0_never_stops(site):
    server = EmbeddedServer(site / ".sooner", idle_stop_s=0)
    server.ensure_running()
    status = server.status()
    assert status.idle_stop_s is None and still_running_after(status.pid, 4 * SHORT)


def test_the_idle_watch_counts_connections_and_waits_for_the_first_client():
    now = [0.0]
    watch = IdleWatch(10.0, None, "token", clock=lambda: now[0])
    now[0] = 15.0
    assert not watch.should_stop()  # nobody connected yet: the starting command gets its grace
    watch.opened()
    watch.opened()
    now[0] = 100.0
    watch.closed()
    now[0] = 200.0
    assert watch.idle_for() == 0 and not watch.should_stop()
    watch.closed()
    now[0] = 209.0
    assert not watch.should_stop()
    now[0] = 210.0
    assert watch.should_stop()


def test_the_idle_watch_obeys_the_keep_file_only_with_its_own_token(tmp_path):
    keep = tmp_path / "db.keep"
    now = [0.0]
    watch = IdleWatch(1.0, str(keep), "mine", clock=lambda: now[0])
    watch.opened()
    watch.closed()
    now[0] = 5.0
    keep.write_text("someone else's")
    assert watch.should_stop()
    keep.write_text("mine")
    assert not watch.should_stop()
