"""Load-aware dispatch with three real workers of different speed on the embedded server.

Each worker runs the same job, whose script sleeps for a time that depends on the worker
running it (``SOONER_WORKER``), as if the three ran on hosts of different speed. The workers
measure their speed from the runs they finished and advertise it in their heartbeat; then a
run queued while all three are free goes to the fastest. Waits are on conditions with deadlines.
"""

from __future__ import annotations

import sys
from collections import Counter

import pytest

from conftest import wait_for
from sooner.config import Settings
from sooner.model import FINISHED, ManualTrigger, RunStatus
from sooner.runs.service import RunService
from sooner.worker.testing import deploy_files

SLEEP_S = {"fast": 0.05, "mid": 0.2, "slow": 0.5}
SCRIPT = f"""#!{sys.executable}
import os, time
time.sleep({SLEEP_S!r}[os.environ["SOONER_WORKER"]])
"""


@pytest.fixture
def settings(embedded_store) -> Settings:
    return Settings(mongo_url=embedded_store.url, database=embedded_store.database_name, heartbeat_s=0.2,
                    lease_s=5.0, shutdown_grace_s=2.0, output_flush_ms=50, dispatch_hold_ms=1000)


def finished(store, run_id: str):
    return wait_for(lambda: (r := store.runs.find(run_id)) is not None and r.status in FINISHED and r, 20,
                    message=f"run {run_id} to finish")


def free_in_every_view(workers, name: str) -> bool:
    """Every worker's fleet view (its last read of ``workers``) shows ``name`` with a free slot."""
    for worker in workers:
        seen = {w.name: w for w in worker.dispatch.view.workers}
        if name not in seen or len(seen[name].running) >= seen[name].capacity:
            return False
    return True


def test_a_run_queued_while_all_are_free_goes_to_the_fastest_worker(embedded_store, settings, start_worker, tmp_path):
    # given three workers of one slot each, on hosts of different speed, that re-measure speed often
    store = embedded_store
    deploy_files(store, {"jobs/work.py": SCRIPT})
    service = RunService(store, settings)
    workers = []
    for name in SLEEP_S:
        worker = start_worker(store, settings, name, 1, cache=tmp_path / f"cache-{name}")
        worker.dispatch.speed_every_s = 0.3
        workers.append(worker)

    # when a burst of runs keeps all three busy, each finishes some and measures its speed
    burst = [service.queue("jobs/work.py", ManualTrigger()).id for _ in range(12)]
    warm = Counter(finished(store, run_id).worker for run_id in burst)
    assert set(warm) == set(SLEEP_S) and warm["fast"] > warm["slow"], warm
    wait_for(lambda: (speeds := {n: store.workers.get(n).speed for n in SLEEP_S})
             and None not in speeds.values() and speeds["fast"] > speeds["mid"] > speeds["slow"], 20,
             message="the workers to advertise their measured speeds")
    for worker in workers:  # measured: no need to keep re-reading the fleet's runs
        worker.dispatch.speed_every_s = 60

    # and then runs are queued one at a time, each while every worker sees the fast one free
    taken = Counter()
    for _ in range(10):
        wait_for(lambda: free_in_every_view(workers, "fast"), 10, 0.01, "every view to show 'fast' free")
        run = finished(store, service.queue("jobs/work.py", ManualTrigger()).id)
        assert run.status is RunStatus.SUCCEEDED
        taken[run.worker] += 1

    # then the fastest worker took (nearly) all of them: the others held back for it (a second at most: on
    # a loaded machine the fast worker's loop may be in a heartbeat for a while)
    assert taken["fast"] >= 9, taken
    assert taken["fast"] > taken["mid"] and taken["fast"] > taken["slow"]
