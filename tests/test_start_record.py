"""When a run's start is stored: with its end for a script that ends quickly, on its own while it runs.

A run is ``running`` from its claim; the start record (pid, host, the process's
create time, its supervisor, ``started_at``) identifies the process for a later
worker on the host. Stored ``start_record_s`` after the spawn, or with the end
when the script ended first, a short run costs one write fewer. A claim says how
long the script may outlive the lease (``outlives_lease_s``), so a run whose
worker died before its start was stored is still retried only after that.
Real worker, real scripts, the embedded server.
"""

from __future__ import annotations

from pathlib import Path

from conftest import wait_for
from sooner.config import Settings
from sooner.errors import StoreUnreachable
from sooner.model import FINISHED, ManualTrigger, Run, RunStatus
from sooner.runs.service import RunService
from sooner.store import Store
from sooner.worker.testing import deploy_files


def settings_for(store: Store) -> Settings:
    return Settings(mongo_url=store.url, database=store.database_name, heartbeat_s=0.2, lease_s=2.0,
                    cancel_grace_s=1.0, output_flush_ms=50)


def finished(store: Store, run_id: str) -> Run:
    return wait_for(lambda: (r := store.runs.get(run_id)).status in FINISHED and r, 30, message=f"run {run_id} to end")


def assert_identified(run: Run, worker_host: str, *, while_running: bool) -> None:
    """The start record: what lets a later worker on the host verify the process before signalling it.

    The script's create time is read when the record is stored on its own: a script that has
    ended by then (it is stored with the end) has none, and no process to verify either.
    """
    assert run.pid and run.pgid == run.pid and run.host == worker_host, run
    assert run.supervisor_pid and run.supervisor_started_at, run
    assert bool(run.pid_started_at) is while_running, run
    assert run.started_at is not None and run.claimed_at is not None and run.claimed_at <= run.started_at, run


def test_a_script_that_ends_first_has_its_start_stored_with_its_end(embedded_store, start_worker):
    settings = settings_for(embedded_store)
    deploy_files(embedded_store, {"noop.sh": "#!/bin/sh\nexit 0\n"})
    worker = start_worker(embedded_store, settings, "quick", 1)
    worker.runner.start_record_s = 60.0  # the script surely ends first
    run = RunService(embedded_store, settings).queue("noop.sh", ManualTrigger())
    done = finished(embedded_store, run.id)
    assert done.status is RunStatus.SUCCEEDED
    assert_identified(done, worker.host, while_running=False)
    assert done.finished_at is not None and done.started_at is not None and done.started_at <= done.finished_at
    assert done.commit == run.commit and done.duration_s is not None


def test_a_running_script_has_its_start_stored_while_it_runs(embedded_store, start_worker, tmp_path: Path):
    settings = settings_for(embedded_store)
    gate = tmp_path / "go"
    deploy_files(embedded_store, {"wait.sh": f"#!/bin/sh\nwhile [ ! -e {gate} ]; do sleep 0.02; done\n"})
    worker = start_worker(embedded_store, settings, "slow", 1)
    worker.runner.start_record_s = 0.05
    run = RunService(embedded_store, settings).queue("wait.sh", ManualTrigger())
    running = wait_for(lambda: (r := embedded_store.runs.get(run.id)).pid and r, 30, message="the start record")
    assert running.status is RunStatus.RUNNING and running.finished_at is None
    assert_identified(running, worker.host, while_running=True)
    gate.touch()
    done = finished(embedded_store, run.id)
    assert done.status is RunStatus.SUCCEEDED and done.pid == running.pid and done.started_at == running.started_at


def test_a_start_the_database_cannot_take_does_not_fail_the_run(embedded_store, start_worker, tmp_path: Path,
                                                               monkeypatch):
    # given a database that refuses the start record (unreachable) the first time it is written
    settings = settings_for(embedded_store)
    gate = tmp_path / "go"
    deploy_files(embedded_store, {"wait.sh": f"#!/bin/sh\nwhile [ ! -e {gate} ]; do sleep 0.02; done\necho done\n"})
    worker = start_worker(embedded_store, settings, "blip", 1)
    worker.runner.start_record_s = 0.0
    refused = []
    original = embedded_store.runs.record_started

    def once_unreachable(run_id, fields):
        if not refused:
            refused.append(run_id)
            raise StoreUnreachable("cannot reach the database (injected)")
        return original(run_id, fields)
    monkeypatch.setattr(embedded_store.runs, "record_started", once_unreachable)
    # when the run is queued, and its script ends once the refusal happened
    run = RunService(embedded_store, settings).queue("wait.sh", ManualTrigger())
    wait_for(lambda: refused, 30, message="the refused start record")
    gate.touch()
    # then the run went on and succeeded, once, with its start stored
    done = finished(embedded_store, run.id)
    assert done.status is RunStatus.SUCCEEDED and done.attempt == 1, done
    assert_identified(done, worker.host, while_running=True)
    assert "done" in "".join(chunk["text"] for chunk in embedded_store.output.read(run.id))


def test_a_claim_says_how_long_its_script_may_outlive_the_lease(embedded_store):
    settings = Settings(lease_s=2.0, outage_grace_s=30.0)
    deploy_files(embedded_store, {"noop.sh": "#!/bin/sh\n"})
    service = RunService(embedded_store, settings)
    one, two = (service.queue("noop.sh", ManualTrigger()) for _ in range(2))
    taken = service.take(one.id, "w1", settings.lease_s)
    assert taken is not None and taken.outlives_lease_s == settings.outlives_lease_s == 28.0
    offers = service.claim_offers("w1", ())
    [batch] = service.take_offers(offers, "w1", settings.lease_s, set())
    assert isinstance(batch, Run) and batch.id == two.id and batch.outlives_lease_s == 28.0
