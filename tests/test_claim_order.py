"""Which queued run a worker claims: the oldest, until it has lost one to a competitor.

Workers sharing a queue would all try its oldest run first and all but one
lose it (a wasted claim and query each). A worker that lost a race starts its
looks at the queue, for ``CONTENDED_S``, at a place of its own; a worker alone
keeps strict queue order.
"""

from __future__ import annotations

import zlib

from sooner.config import Settings
from sooner.model import ManualTrigger
from sooner.runs.service import RunService
from sooner.worker import loop as loop_module
from sooner.worker.testing import deploy_files

NOOP = {"noop.sh": "#!/bin/sh\nexit 0\n"}


def queue(store, count: int) -> list[str]:
    service = RunService(store, Settings())
    return [service.queue("noop.sh", ManualTrigger()).id for _ in range(count)]


def claim_all(worker, count: int) -> list[str]:
    """Claim ``count`` runs one by one, let them end; their ids in claim order."""
    claimed = []
    for _ in range(count):
        run = worker.run_once()
        assert run is not None
        claimed.append(run.id)
    settle(worker)
    return claimed


def settle(worker) -> None:
    """Wait for the worker's runs to end (they write to the test's store until then)."""
    assert worker.wait_idle(30)


def lose_the_oldest_once(worker, store) -> list:
    """At the worker's next look at the queue, a rival worker claims the oldest run it found; the rival's run."""
    offers = worker.service.claim_offers
    rival = RunService(store, Settings())
    raced: list = []

    def offers_then_a_rival_takes_the_oldest(*args, **kwargs):
        found = offers(*args, **kwargs)
        if not raced:
            raced.append(rival.take(found[0].id, "rival", 30))
        return found
    worker.service.claim_offers = offers_then_a_rival_takes_the_oldest
    return raced


def competing_name() -> str:
    """A worker name whose own place among five candidates is neither the first nor the second."""
    return next(n for n in (f"w{i}" for i in range(100)) if zlib.crc32(n.encode()) % 5 not in (0, 1))


def test_a_worker_alone_claims_in_queue_order(embedded_store, start_worker):
    deploy_files(embedded_store, NOOP)
    worker = start_worker(embedded_store, Settings(), "alone", capacity=10, start=False)
    ids = queue(embedded_store, 6)
    assert claim_all(worker, 6) == ids


def test_after_losing_a_run_to_a_competitor_a_worker_starts_at_its_own_place(embedded_store, start_worker):
    deploy_files(embedded_store, NOOP)
    name = competing_name()
    worker = start_worker(embedded_store, Settings(), name, capacity=10, start=False)
    ids = queue(embedded_store, 6)
    raced = lose_the_oldest_once(worker, embedded_store)

    # when the worker claims after losing the oldest run
    first = worker.run_once()

    # then it did not take the rival's run, and started at its own place among the five left
    assert raced and raced[0] is not None and raced[0].id == ids[0]
    assert first is not None and first.id != ids[0]
    settle(worker)
    left = ids[1:]
    place = zlib.crc32(name.encode()) % len(left)
    assert first.id == left[place], (left.index(first.id), place)
    assert embedded_store.runs.get(ids[0]).worker == "rival"
    # and every other run is still claimed exactly once
    rest = claim_all(worker, 4)
    assert sorted([first.id, *rest]) == sorted(left)


def test_the_own_place_ends_contended_s_after_the_lost_race(embedded_store, start_worker, monkeypatch):
    deploy_files(embedded_store, NOOP)
    monkeypatch.setattr(loop_module, "CONTENDED_S", 0.0)  # the lost race is over at once
    name = competing_name()
    worker = start_worker(embedded_store, Settings(), name, capacity=10, start=False)
    ids = queue(embedded_store, 6)
    lose_the_oldest_once(worker, embedded_store)
    # then, with no competitor since, the worker is back to queue order
    assert claim_all(worker, 5) == ids[1:]
