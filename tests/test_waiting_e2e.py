"""Waiting messages and ETA end to end (issues #11, #12): the embedded server, real workers (the worker loop
on threads), the web app behind a real HTTP server, and `sooner run --follow` as a real subprocess.

A run aimed at a tag nobody has is flagged over the API and by ``--follow``; once a worker with the
tag starts, it runs. Behind a busy worker a queued run gets its position and an ETA.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import requests

from conftest import served, signed_in, wait_for
from sooner.config import load_settings
from sooner.model import ManualTrigger, RunStatus
from sooner.runs.service import RunService
from sooner.store import open_store
from sooner.worker.testing import deploy_files

# Exits at once, or (data {"until": PATH}) once PATH exists: a run that keeps its worker busy on demand.
HOLD = """#!/usr/bin/env python3
import json, os, time
data = json.loads(os.environ.get("SOONER_DATA") or "null") or {}
while data.get("until") and not os.path.exists(data["until"]):
    time.sleep(0.02)
print("done")
"""


@pytest.fixture
def world(site: Path, fast_passwords):
    """(store, settings, app, service) on the site's embedded server, with jobs gpu.sh and hold.sh deployed."""
    from sooner.webapp import create_app

    settings = load_settings(site / "config.json", environ={})
    store = open_store(settings)
    deploy_files(store, {"gpu.sh": "#!/bin/sh\necho on gpu\n", "hold.py": HOLD})
    store.users.add("ann", "ann-password", admin=True)
    app, _ = create_app(settings, store, live=False)
    yield store, settings, app, RunService(store, settings)
    store.close()


def bearer(store) -> dict[str, str]:
    text, _ = store.tokens.create("ann", "test")
    return {"Authorization": f"Bearer {text}"}


def test_a_run_for_a_tag_nobody_has_is_flagged_and_runs_once_such_a_worker_starts(world, start_worker):
    store, settings, app, service = world
    headers = bearer(store)
    # given a worker without the tag, and a run aimed at tag gpu
    start_worker(store, settings, "plain", 1)
    run = service.queue("gpu.sh", ManualTrigger(author="ann"), target="tag:gpu")
    with served(app) as base:
        # when its state is polled over HTTP, on both APIs
        old = requests.get(f"{base}/api/runs/{run.id}", headers=headers, timeout=10).json()
        v1 = requests.get(f"{base}/api/v1/runs/{run.id}/waiting", headers=headers, timeout=10)
        etag = requests.get(f"{base}/api/v1/runs/{run.id}", headers=headers, timeout=10)
        # then both say no online worker can take it
        assert old["status"] == "queued"
        assert old["waiting"]["code"] == "no_worker"
        assert old["waiting"]["message"] == "no worker online for tag 'gpu'"
        assert v1.status_code == 200 and v1.headers["Cache-Control"] == "no-store"
        assert v1.json() == {"run": run.id, "status": "queued", "waiting": old["waiting"]}
        # and the v1 run representation stays stored fields only (its ETag answers polls)
        assert "waiting" not in etag.json() and etag.headers["ETag"]
        # when a worker with the tag starts
        start_worker(store, settings, "gpu-1", 1, tags=["gpu"])
        # then the run runs there, and nothing waits any more
        done = wait_for(lambda: (r := requests.get(f"{base}/api/runs/{run.id}", headers=headers, timeout=10).json())
                        ["status"] == "succeeded" and r, timeout=60, message="the gpu run to succeed")
        assert done["worker"] == "gpu-1" and done["waiting"] is None
        after = requests.get(f"{base}/api/v1/runs/{run.id}/waiting", headers=headers, timeout=10).json()
        assert after == {"run": run.id, "status": "succeeded", "waiting": None}


def test_runs_behind_a_busy_worker_get_their_position_and_an_eta(world, start_worker, tmp_path):
    store, settings, app, service = world
    headers = bearer(store)
    start_worker(store, settings, "w1", 1)
    # given a finished run of hold.py (its duration feeds the estimate) and one that keeps w1 busy
    quick = service.queue("hold.py", ManualTrigger(author="ann"))
    wait_for(lambda: store.runs.get(quick.id).status is RunStatus.SUCCEEDED, timeout=60, message="the quick run")
    release = tmp_path / "release"
    busy = service.queue("hold.py", ManualTrigger(author="ann"), data={"until": str(release)})
    wait_for(lambda: store.runs.get(busy.id).status is RunStatus.RUNNING, timeout=60, message="w1 to be busy")
    second, third = (service.queue("hold.py", ManualTrigger(author="ann")) for _ in range(2))
    try:
        with served(app) as base:
            # when the queued runs are listed over HTTP
            listed = requests.get(f"{base}/api/runs", params={"job": "hold.py", "status": "queued"}, headers=headers,
                                  timeout=10).json()["runs"]
        page = signed_in(app, "ann", "ann-password").get("/runs?job=hold.py")
        waits = {r["id"]: r["waiting"] for r in listed}
        # then each knows its place behind the busy worker, and roughly when it starts
        assert waits[second.id]["code"] == waits[third.id]["code"] == "busy"
        assert waits[second.id]["position"] == 1 and waits[third.id]["position"] == 2
        assert waits[third.id]["message"] == "the eligible worker w1 is busy (1/1 slot); position 2 in queue"
        assert 0 < waits[second.id]["eta_s"] < waits[third.id]["eta_s"]
        # and the runs page shows the estimate instead of a duration
        assert page.status_code == 200 and 'class="eta"' in page.text
    finally:
        release.touch()
    wait_for(lambda: store.runs.get(third.id).status is RunStatus.SUCCEEDED, timeout=60, message="the queue to drain")


def test_run_follow_prints_why_it_waits_and_follows_it_once_a_worker_can_take_it(world, start_worker, site):
    store, settings, _, _ = world
    # given `sooner run --follow` of a job for worker or tag gpu2, which no worker has
    process = subprocess.Popen([sys.executable, "-m", "sooner", "run", "gpu.sh", "--worker", "gpu2", "--follow"],
                               cwd=site, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "SOONER_LOG_LEVEL": "warning"})
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True)  # type: ignore[arg-type]
    reader.start()
    try:
        # then it says why the run waits
        wait_for(lambda: any("waiting: no worker online named or tagged 'gpu2'" in line for line in lines),
                 timeout=30, message=f"the waiting line (so far: {lines})")
        # when a worker tagged gpu2 starts, the run goes on and --follow ends with its exit code
        start_worker(store, settings, "g2", 1, tags=["gpu2"])
        process.wait(timeout=60)  # not communicate(): it would read stderr too, beside the reader thread
        out = process.stdout.read()  # type: ignore[union-attr]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    reader.join(10)
    assert process.returncode == 0, lines
    assert out == "on gpu\n"
    waiting = [line for line in lines if line.startswith("sooner: waiting:")]
    assert len(waiting) == 1, lines  # said once, not once per poll
    assert any("started on g2" in line for line in lines), lines


def test_the_run_page_shows_the_reason_and_the_live_run_message_updates_it(mock_store, fast_passwords):
    from sooner.webapp import create_app

    # given the web app (live hub ticked by hand) and a run for tag gpu, which no worker has
    settings = load_settings(None, environ={}, overrides={"secret_key": "k" * 40, "mongo_url": mock_store.url})
    app, socketio = create_app(settings, mock_store, live=False)
    app.config["TESTING"] = True
    mock_store.users.add("ann", "ann-password", admin=True)
    mock_store.jobs.record_deployed("gpu.sh", commit="c" * 40, blob="b" * 40)
    run = RunService(mock_store, settings).queue("gpu.sh", ManualTrigger(author="ann"), target="tag:gpu")
    client = signed_in(app, "ann", "ann-password")
    # when the page is opened and its live room joined
    page = client.get(f"/runs/{run.id}")
    socket = socketio.test_client(app, flask_test_client=client)
    assert socket.emit("join_run", {"run": run.id, "after_seq": -1}, callback=True)["ok"]
    first = [m["args"][0] for m in socket.get_received() if m["name"] == "run"]
    # then both say why it waits
    assert page.status_code == 200 and 'id="run-waiting" data-code="no_worker"' in page.text
    assert "no worker online for tag &#39;gpu&#39;" in page.text
    assert first[-1]["waiting"]["code"] == "no_worker"
    # when a worker tagged gpu comes online, the next sweep sends the new reason (the run itself did not change)
    mock_store.workers.register("gpu-1", instance="i", host="h", pid=1, capacity=1, tags=["gpu"], version="t",
                                stale_after_s=60)
    hub = app.extensions["sooner"].hub
    hub.tick()
    update = [m["args"][0] for m in socket.get_received() if m["name"] == "run"]
    assert update and update[-1]["waiting"]["code"] == "starting"
    hub.tick()  # an unchanged reason sends nothing (mongomock has no change streams: every tick sweeps)
    assert [m for m in socket.get_received() if m["name"] == "run"] == []
