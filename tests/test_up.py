"""`sooner up`: one command runs web + scheduler + a local worker; Ctrl-C stops everything."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

from sooner.config import load_settings
from sooner.store import open_store
from sooner.store.embedded import EmbeddedServer

from conftest import git, run_sooner, wait_for


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return None


def test_up_creates_a_site_runs_a_pushed_job_and_stops_cleanly_on_ctrl_c(tmp_path: Path):
    site = tmp_path / "site"
    port = free_port()
    up = subprocess.Popen([sys.executable, "-m", "sooner", "up", str(site), "--port", str(port)],
                          cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env={**os.environ, "SOONER_CONFIG": ""})
    try:
        # (a loaded machine may take a while; a `sooner up` that gave up says why in its output)
        wait_for(lambda: up.poll() is not None or http_status(f"http://127.0.0.1:{port}/login") == 200, timeout=120,
                 message="web server")
        assert up.poll() is None, up.communicate()[0]
        settings = load_settings(site / "config.json", environ={})
        store = open_store(settings)
        wait_for(lambda: store.workers.get("local"), timeout=30, message="local worker to register")

        clone = tmp_path / "mine"
        git("clone", "-q", str(site / "scripts.git"), str(clone), cwd=tmp_path)
        git("checkout", "-q", "-B", "main", cwd=clone)
        (clone / "hello.sh").write_text("#!/usr/bin/env bash\necho done!\n")
        (clone / "hello.sh").chmod(0o755)
        git("add", ".", cwd=clone)
        git("commit", "-qm", "add hello", cwd=clone)
        pushed = git("push", "origin", "main", cwd=clone)
        assert "sooner: created job hello.sh (disabled)" in pushed.stderr

        assert run_sooner("job", "enable", "hello.sh", cwd=site).returncode == 0
        result = run_sooner("run", "hello.sh", "--follow", cwd=site)
        assert result.returncode == 0, result.stderr
        assert "done!" in result.stdout
    finally:
        up.send_signal(signal.SIGINT)
        output, _ = up.communicate(timeout=60)
    assert up.returncode == 0, output
    assert "First start: created web user 'admin' with password" in output
    assert "Sooner stopped." in output
    assert not EmbeddedServer(site / ".sooner").status().running
    store = open_store(settings)  # starts the database again, to look
    worker = store.workers.get("local")
    assert worker.stopped_at is not None
    assert store.runs.list(status="running") == []
    store.close()
    EmbeddedServer(site / ".sooner").stop()


def test_up_on_a_busy_port_says_so_in_one_line_before_claiming_anything_is_up(tmp_path: Path):
    # given another server listening on the port
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        # when `sooner up` is asked to use it
        result = run_sooner("up", str(tmp_path / "site"), "--port", str(port), cwd=tmp_path)
    # then it fails with one clear line, never printing a password or "Sooner is up"
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"127.0.0.1:{port} is in use" in result.stderr
    assert "Sooner is up" not in result.stdout and "password" not in result.stdout
    try:
        EmbeddedServer(load_settings(tmp_path / "site" / "config.json").state_dir).stop()
    except Exception:  # noqa: BLE001 - no site or no server: nothing to stop
        pass
