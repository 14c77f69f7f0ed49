"""`sooner run|runs|logs|queue|workers` through the real CLI, against a site made by `sooner init`."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest

from conftest import git, run_sooner, wait_for
from sooner.cli.runtime import ProgressDisplay, exit_code_for
from sooner.clock import utcnow
from sooner.config import load_settings
from sooner.model import Progress, Run, RunStatus
from sooner.runs.service import RunService
from sooner.store import open_store

HELLO = """#!/bin/sh
echo "hello $SOONER_DATA"
echo "to stderr" >&2
echo ">>> sooner.progress(1, 4)" >&2
sleep 0.2
echo ">>> sooner.progress(4, 4)" >&2
echo done
exit 3
"""


@pytest.fixture
def store(site):
    store = open_store(load_settings(site / "config.json", environ={}))
    store.jobs.record_deployed("hello.sh", commit="c1", blob="b1")
    yield store
    store.close()


def sooner(site: Path, *args: str, **options) -> subprocess.CompletedProcess:
    return run_sooner(*args, cwd=site, env={"USER": "alice", **options.pop("env", {})}, **options)


def test_run_prints_the_id_and_runs_lists_it(site, store):
    result = sooner(site, "run", "hello.sh", "--data", '{"n": 1}')

    assert result.returncode == 0, result.stderr
    run_id = result.stdout.strip()
    run = store.runs.get(run_id)
    assert (run.job, run.status, run.data) == ("hello.sh", "queued", {"n": 1})
    assert run.trigger.to_doc() == {"type": "manual", "author": "alice"}
    assert "no worker is online; the run waits" in result.stderr

    listed = sooner(site, "runs")
    assert listed.returncode == 0, listed.stderr
    header, row = listed.stdout.splitlines()[:2]
    assert header.split() == ["RUN", "STATUS", "WORKER", "TRIGGER", "STARTED", "DURATION", "PROGRESS", "ETA", "ID"]
    assert row.split() == ["hello.sh#1", "queued", "-", "manual", "by", "alice", "-", "-", "-", "no", "worker", run_id]
    assert sooner(site, "runs", "--status", "running").stdout.strip() == "no runs match"
    assert run_id in sooner(site, "runs", "--job", "hello.sh", "--limit", "1").stdout


def test_run_on_a_named_worker_warns_when_that_worker_is_not_online(site, store):
    store.workers.register("other", instance="i", host="h", pid=1, capacity=1, tags=[], version="1",
                           stale_after_s=30)
    result = sooner(site, "run", "hello.sh", "--worker", "gpu")
    assert result.returncode == 0, result.stderr
    assert store.runs.get(result.stdout.strip()).target == "gpu"
    assert "no worker named or tagged 'gpu' is online" in result.stderr
    assert "warning" not in sooner(site, "run", "hello.sh").stderr  # "other" is online and takes anything


@pytest.mark.parametrize("args, message", [
    (["run", "hello.sh", "--data", "{n: 1}"], "--data is not valid JSON (Expecting property name"),
    (["run", "hello.sh", "--data", ""], "--data is not valid JSON (Expecting value at column 1)"),
    (["run", "nope.sh"], "no job named 'nope.sh'"),
    (["logs", "ffffffffff"], "no run with id 'ffffffffff'"),
    (["queue", "put", "q", "[1,"], "DATA_JSON is not valid JSON"),
    (["queue", "update", "q", "0123456789abcdef01234567", "--status", "x"], "queue q has no entry"),
    (["queue", "list", "bad-name"], "invalid queue name 'bad-name'"),
])
def test_bad_input_is_one_clear_error_line_and_exit_1(site, store, args, message):
    result = sooner(site, *args)
    assert result.returncode == 1
    assert message in result.stderr and "Traceback" not in result.stderr
    assert store.runs.list() == []


def test_logs_prints_the_whole_output_stdout_and_stderr_apart(site, store):
    run_id = sooner(site, "run", "hello.sh").stdout.strip()
    store.output.append(run_id, [(0, "stdout", "line 1\n", None), (1, "stderr", "oops\n", None),
                                 (2, "system", "sooner: started\n", None), (3, "stdout", "line 2\n", None)])

    result = sooner(site, "logs", run_id[:10])

    assert result.returncode == 0, result.stderr
    assert result.stdout == "line 1\nline 2\n"
    assert result.stderr == "oops\nsooner: started\n"

    service = RunService(store)
    assert service.claim("w", [], 30).id == run_id
    service.finish(run_id, RunStatus.FAILED, exit_code=2)
    assert "run hello.sh#1 failed (exit code 2)" in sooner(site, "logs", run_id).stderr


def simulated_worker(store, run_id: str, final: RunStatus, exit_code: int | None, started: threading.Event) -> None:
    """What a worker does, step by step: claim, progress, output chunks, end."""
    service = RunService(store)
    wait_for(lambda: service.claim("sim", [], 30), timeout=20, message="the run to claim")
    store.runs.mark_started(run_id, pid=1, commit=None)
    started.wait(20)
    for seq in range(3):
        store.runs.set_progress(run_id, seq + 1, 3)
        store.output.append(run_id, [(2 * seq, "stdout", f"out {seq}\n", None),
                                     (2 * seq + 1, "stderr", f"err {seq}\n", None)])
        time.sleep(0.1)
    service.finish(run_id, final, exit_code=exit_code, note="worker vanished" if final is RunStatus.LOST else None)


@pytest.mark.parametrize("final, exit_code, expected", [
    (RunStatus.SUCCEEDED, 0, 0),
    (RunStatus.LOST, None, 75),
])
def test_logs_follow_streams_until_the_run_ends(site, store, final, exit_code, expected):
    run_id = sooner(site, "run", "hello.sh").stdout.strip()
    env = {**os.environ, "SOONER_CONFIG": str(site / "config.json")}
    follower = subprocess.Popen([sys.executable, "-m", "sooner", "logs", run_id, "--follow"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    started = threading.Event()
    worker = threading.Thread(target=simulated_worker, args=(store, run_id, final, exit_code, started))
    worker.start()
    started.set()
    out, err = follower.communicate(timeout=30)
    worker.join(30)

    assert follower.returncode == 0, err
    assert out == "out 0\nout 1\nout 2\n"
    script_err = [line for line in err.splitlines() if not line.startswith("sooner: ")]
    assert script_err == ["err 0", "err 1", "err 2"]
    assert f"run hello.sh#1 {final.value}" in err.splitlines()[-1]
    assert "sooner: progress 3/3 (100%)" in err
    assert exit_code_for(store.runs.get(run_id)) == expected


def test_run_follow_exits_with_the_status_code_of_a_simulated_worker_run(site, store):
    env = {**os.environ, "SOONER_CONFIG": str(site / "config.json"), "USER": "alice"}
    follower = subprocess.Popen([sys.executable, "-m", "sooner", "run", "hello.sh", "--follow"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run = wait_for(lambda: store.runs.list(limit=1), timeout=20, message="the run")[0]
    started = threading.Event()
    started.set()
    simulated_worker(store, run.id, RunStatus.LOST, None, started)
    out, err = follower.communicate(timeout=30)
    assert follower.returncode == 75, err
    assert out == "out 0\nout 1\nout 2\n"
    assert "worker vanished" in err


def ended(status: str, exit_code: int | None = None) -> Run:
    return Run(id="r1", job="j", status=RunStatus(status), exit_code=exit_code)


def test_exit_codes_of_run_follow():
    assert exit_code_for(ended("succeeded", 0)) == 0
    assert exit_code_for(ended("failed", 3)) == 3
    assert exit_code_for(ended("failed", -9)) == 137
    assert exit_code_for(ended("failed", None)) == 1
    assert exit_code_for(ended("timed_out", -15)) == 124
    assert exit_code_for(ended("cancelled")) == 130
    assert exit_code_for(ended("lost")) == 75


def test_progress_without_a_tty_prints_a_line_at_most_every_second(capsys):
    now = [0.0]
    display = ProgressDisplay(tty=False, clock=lambda: now[0])
    for current in range(1, 11):
        display.show(Progress(current, 10))
        now[0] += 0.25
    display.finish(Progress(10, 10))
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["sooner: progress 1/10 (10%)", "sooner: progress 5/10 (50%)", "sooner: progress 9/10 (90%)",
                     "sooner: progress 10/10 (100%)"]


def test_progress_on_a_tty_is_one_redrawn_line(capsys):
    display = ProgressDisplay(tty=True, width=10)
    display.show(Progress(50, 100))
    display.show(Progress(50, 100))
    display.clear()
    err = capsys.readouterr().err
    assert err == "\r\x1b[2K[#####.....] 50%\r\x1b[2K"


def test_queue_put_list_claim_and_update(site, store):
    first = sooner(site, "queue", "put", "emails", '{"to": "a@example.com"}').stdout.strip()
    second = sooner(site, "queue", "put", "emails", "--status", "held", '"plain text"').stdout.strip()
    assert len(first) == 24 and len(second) == 24

    table = sooner(site, "queue", "list", "emails").stdout.splitlines()
    assert table[0].split() == ["ID", "STATUS", "CREATED", "UPDATED", "DATA"]
    assert table[1].startswith(first) and '{"to": "a@example.com"}' in table[1]
    lines = sooner(site, "queue", "list", "emails", "--status", "held", "--json").stdout.splitlines()
    assert [json.loads(line)["data"] for line in lines] == ["plain text"]

    claimed = sooner(site, "queue", "claim", "emails")
    assert claimed.returncode == 0, claimed.stderr
    entry = json.loads(claimed.stdout)
    assert (entry["_id"], entry["status"], entry["data"]) == (first, "working", {"to": "a@example.com"})
    empty = sooner(site, "queue", "claim", "emails")
    assert (empty.returncode, empty.stdout) == (1, "")
    assert "queue emails has no 'pending' entry" in empty.stderr
    held = sooner(site, "queue", "claim", "emails", "--from", "held", "--to", "sending")
    assert json.loads(held.stdout)["_id"] == second

    updated = sooner(site, "queue", "update", "emails", first, "--status", "sent", "--data", '{"ok": true}')
    assert updated.returncode == 0, updated.stderr
    assert (json.loads(updated.stdout)["status"], json.loads(updated.stdout)["data"]) == ("sent", {"ok": True})
    assert store.queues("emails").counts() == {"sent": 1, "sending": 1}
    assert sooner(site, "queue", "list", "nothing").stdout.strip() == "queue nothing has no entries"


def test_workers_lists_live_stale_and_stopped_workers(site, store):
    now = utcnow()
    for name, age in (("fresh", 0), ("silent", 120), ("gone", 5)):
        store.workers.register(name, instance=name, host="box", pid=1, capacity=4, tags=["gpu", "big"],
                               version="9.9", stale_after_s=30, now=now - timedelta(seconds=age))
    store.workers.heartbeat("fresh", "fresh", running=["r1", "r2"])
    store.workers.unregister("gone", "gone")

    result = sooner(site, "workers")

    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
    assert rows["fresh"].split()[:5] == ["fresh", "box", "4", "2", "gpu,big"] and "stale" not in rows["fresh"]
    assert "2m ago (stale)" in rows["silent"]
    assert re.search(r"stopped \ds ago", rows["gone"])  # the CLI starts a second or so after the stop
    assert rows["fresh"].split()[-1] == "9.9"


# -- end to end with a real worker -------------------------------------------------------------
def push_script(site: Path, tmp_path: Path, name: str, text: str) -> None:
    clone = tmp_path / "clone"
    git("clone", "-q", str(site / "scripts.git"), str(clone), cwd=tmp_path)
    git("checkout", "-q", "-B", "main", cwd=clone)
    (clone / name).write_text(text)
    (clone / name).chmod(0o755)
    git("add", "-A", cwd=clone)
    git("commit", "-q", "-m", "add", cwd=clone)
    git("push", "-q", "origin", "main", cwd=clone)


def test_run_follow_streams_a_real_worker_run_and_exits_with_the_script_code(site, tmp_path):
    push_script(site, tmp_path, "hello.sh", HELLO)
    env = {**os.environ, "SOONER_CONFIG": str(site / "config.json")}
    worker = subprocess.Popen([sys.executable, "-m", "sooner", "worker", "-n", "w1"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "ready" in worker.stdout.readline()
        result = sooner(site, "run", "hello.sh", "--follow", "--data", '{"a": 1}', timeout=60)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.communicate(timeout=30)

    assert result.returncode == 3, result.stderr
    assert result.stdout == 'hello {"a": 1}\ndone\n'
    assert "to stderr" in result.stderr and "warning" not in result.stderr
    assert "progress 4/4 (100%)" in result.stderr
    assert "failed (exit code 3)" in result.stderr
