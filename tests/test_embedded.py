"""The embedded nx-27017 server: started on demand, shared, restarted after a crash, data kept."""

from __future__ import annotations

import json
import os
import signal
from concurrent.futures import ThreadPoolExecutor

from sooner.config import load_settings
from sooner.store import open_store
from sooner.store.embedded import EmbeddedServer

from conftest import run_sooner, wait_for


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(") ", 1)[1][:1] == "Z"


def test_first_command_starts_the_server_and_records_its_port(site):
    server = EmbeddedServer(site / ".sooner")
    assert not server.status().running
    result = run_sooner("jobs", cwd=site)
    assert result.returncode == 0, result.stderr
    info = json.loads((site / ".sooner" / "db.json").read_text())
    status = server.status()
    assert status.running and status.port == info["port"] and status.pid == info["pid"]
    assert (site / ".sooner" / "db").is_dir()


def test_concurrent_starts_share_one_server(site):
    server = EmbeddedServer(site / ".sooner")
    with ThreadPoolExecutor(4) as pool:
        urls = set(pool.map(lambda _: EmbeddedServer(site / ".sooner").ensure_running(), range(4)))
    assert len(urls) == 1
    assert server.status().running


def test_data_survives_kill_9_and_the_next_command_restarts_the_server(site):
    settings = load_settings(site / "config.json", environ={})
    store = open_store(settings)
    store.jobs.record_deployed("kept.sh", commit="c1", blob="b1")
    store.close()
    pid = EmbeddedServer(settings.state_dir).status().pid
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: _pid_gone(pid), message="server to die")
    result = run_sooner("jobs", cwd=site)
    assert result.returncode == 0, result.stderr
    assert "kept.sh" in result.stdout
    assert EmbeddedServer(settings.state_dir).status().pid != pid


def test_existing_client_reconnects_after_the_server_is_restarted(site):
    settings = load_settings(site / "config.json", environ={})
    store = open_store(settings)
    store.jobs.record_deployed("a.sh", commit="c1", blob="b1")
    pid = EmbeddedServer(settings.state_dir).status().pid
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: _pid_gone(pid), message="server to die")
    # The store's retry policy restarts the server (on the same port) and goes on.
    assert [job.name for job in store.jobs.list()] == ["a.sh"]
    store.close()


def test_db_commands_report_start_and_stop(site):
    started = run_sooner("db", "start", cwd=site)
    assert started.returncode == 0 and "running at mongodb://127.0.0.1:" in started.stdout
    status = run_sooner("db", "status", cwd=site)
    assert "embedded database: running" in status.stdout
    stopped = run_sooner("db", "stop", cwd=site)
    assert "embedded database stopped" in stopped.stdout
    assert "stopped" in run_sooner("db", "status", cwd=site).stdout
    assert "was not running" in run_sooner("db", "stop", cwd=site).stdout


def test_db_commands_refuse_when_mongo_url_is_set(site):
    result = run_sooner("db", "status", cwd=site, env={"SOONER_MONGO_URL": "mongodb://127.0.0.1:1"})
    assert result.returncode == 1
    assert "uses mongo_url" in result.stderr
