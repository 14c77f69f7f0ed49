"""`sooner up` in one web process: web, scheduler and worker in gunicorn's one worker; Ctrl-C stops the whole tree.

A real `sooner up` on a temporary site (its own HOME and port). The pids of
its whole tree are recorded while it runs (its descendants, and the embedded
database, which runs in a session of its own), and after Ctrl-C none of them
may be left. No figures are asserted (bench/footprint.py measures them).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil

from sooner.config import load_settings
from sooner.model import RunStatus
from sooner.store import open_store

from conftest import git, run_sooner, wait_for
from test_up import free_port, http_status


def alive(pid: int, created: float) -> bool:
    """True if the process that had this pid and start time still runs (a reused pid does not count)."""
    try:
        process = psutil.Process(pid)
        return process.create_time() == created and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def tree_of(up: subprocess.Popen, site: Path) -> dict[int, float]:
    """pid -> start time of `sooner up`, its descendants and the embedded database."""
    root = psutil.Process(up.pid)
    processes = [root, *root.children(recursive=True)]
    record = json.loads((site / ".sooner" / "db.json").read_text())
    processes.append(psutil.Process(record["pid"]))
    return {p.pid: p.create_time() for p in processes}


def push(site: Path, tmp_path: Path, files: dict[str, str]) -> None:
    clone = tmp_path / "mine"
    git("clone", "-q", str(site / "scripts.git"), str(clone), cwd=tmp_path)
    git("checkout", "-q", "-B", "main", cwd=clone)
    for name, text in files.items():
        (clone / name).write_text(text)
        (clone / name).chmod(0o755)
    git("add", ".", cwd=clone)
    git("commit", "-qm", "add jobs", cwd=clone)
    git("push", "-q", "origin", "main", cwd=clone)


def test_up_runs_web_scheduler_and_worker_in_one_process_and_ctrl_c_stops_the_whole_tree(tmp_path: Path):
    home = tmp_path / "home"
    home.mkdir()
    (home / ".gitconfig").write_text("[user]\n\tname = Tester\n\temail = tester@example.com\n")
    env = {**os.environ, "HOME": str(home), "SOONER_CONFIG": ""}
    env.pop("SOONER_MONGO_URL", None)
    site = tmp_path / "site"
    port = free_port()
    up = subprocess.Popen([sys.executable, "-m", "sooner", "up", str(site), "--port", str(port)], cwd=tmp_path,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    pids: dict[int, float] = {}
    store = None
    try:
        # given `sooner up` serving /healthz
        wait_for(lambda: up.poll() is not None or http_status(f"http://127.0.0.1:{port}/healthz") == 200,
                 timeout=120, message="/healthz")
        assert up.poll() is None, up.communicate()[0]
        store = open_store(load_settings(site / "config.json", environ={}))
        worker = wait_for(lambda: store.workers.get("local"), timeout=30, message="the local worker")
        pids = tree_of(up, site)
        # the worker runs in the web server's worker process: a child of `sooner up`, not a process of its own
        web_workers = [child.pid for child in psutil.Process(up.pid).children()
                       if "sooner.store.nx_server" not in " ".join(child.cmdline())]
        assert web_workers == [worker.pid], (web_workers, worker.pid)
        assert not any("scheduler" in psutil.Process(pid).cmdline() for pid in pids)

        # when a job is pushed and run, and another fires every second
        push(site, tmp_path, {"hello.sh": "#!/usr/bin/env bash\necho hello from $SOONER_RUN_ID\n",
                              "tick.sh": "#!/usr/bin/env bash\necho tick\n"})
        assert run_sooner("job", "set", "tick.sh", "--schedule", "* * * * * *", cwd=site, env=env).returncode == 0
        assert run_sooner("job", "enable", "tick.sh", cwd=site, env=env).returncode == 0
        result = run_sooner("run", "hello.sh", "--follow", cwd=site, env=env)

        # then the worker in it ran the script, and the scheduler in it fired the ticks
        assert result.returncode == 0, result.stderr
        assert "hello from" in result.stdout
        (hello,) = store.runs.list(job="hello.sh")
        assert hello.worker == "local" and hello.status is RunStatus.SUCCEEDED
        ticks = wait_for(lambda: [r for r in store.runs.list(job="tick.sh") if r.status is RunStatus.SUCCEEDED],
                         timeout=60, message="a scheduled tick to run")
        assert ticks[0].trigger.type == "cron"
        pids.update(tree_of(up, site))  # the launcher and any supervisor started meanwhile
    finally:
        if store is not None:
            store.close()
        # when Ctrl-C is pressed
        up.send_signal(signal.SIGINT)
        output, _ = up.communicate(timeout=90)

    # then everything stopped: no process of the tree is left, and the worker unregistered
    assert up.returncode == 0, output
    assert "Sooner stopped." in output and "worker local stopped" in output, output
    left = [pid for pid, created in pids.items() if alive(pid, created)]
    assert not left, (left, output)
    store = open_store(load_settings(site / "config.json", environ={}))  # starts the database again, to look
    try:
        assert store.workers.get("local").stopped_at is not None
        assert store.runs.list(status="running") == []
    finally:
        store.close()
        run_sooner("db", "stop", cwd=site, env=env)


def test_up_whose_worker_name_is_taken_says_so_in_one_line_and_leaves_nothing_running(tmp_path: Path):
    # given a live `sooner worker -n local` on the site
    site = tmp_path / "site"
    assert run_sooner("init", str(site), cwd=tmp_path).returncode == 0
    env = {"SOONER_CONFIG": str(site / "config.json")}
    holder = subprocess.Popen([sys.executable, "-m", "sooner", "worker", "-n", "local"], cwd=site,
                              env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert holder.stdout is not None
        wait_for(lambda: "ready" in holder.stdout.readline(), timeout=60, message="the worker holding the name")
        # when `sooner up` starts with the same worker name
        up = subprocess.run([sys.executable, "-m", "sooner", "up", "--port", str(free_port())], cwd=site,
                            env={**os.environ, **env}, capture_output=True, text=True, timeout=120)
    finally:
        holder.send_signal(signal.SIGTERM)
        holder.communicate(timeout=60)
    # then it fails with the reason in one line, and stops what it started
    assert up.returncode == 1, up.stdout + up.stderr
    assert "sooner up: error:" in up.stdout and "local" in up.stdout, up.stdout + up.stderr
    assert "Traceback" not in up.stdout + up.stderr
    assert "Sooner is up" not in up.stdout
    assert "Sooner stopped." in up.stdout
    run_sooner("db", "stop", cwd=site, env=env)
