"""Fleet-wide concurrency limits (sooner.store.limits) on the embedded server: race-free across threads with
their own clients, freed at the run's end and at lease expiry, repaired when a holder vanished."""

from __future__ import annotations

import threading

import pytest

from sooner.clock import FakeClock
from sooner.config import Settings, load_settings
from sooner.model import ManualTrigger, RunStatus
from sooner.model.dispatch import Candidate, LimitReached
from sooner.runs.service import RunService
from sooner.store import open_store
from sooner.store.limits import ORPHAN_AFTER_S
from sooner.worker.testing import deploy_files

SCRIPT = "#!/bin/sh\ntrue\n"


@pytest.fixture
def store(embedded_store):
    deploy_files(embedded_store, {name: SCRIPT for name in ("backup/db.sh", "backup/files.sh", "report.sh", "gpu.sh",
                                                            "one.sh")},
                 settings={"gpu.sh": {"requires": ["gpu"]}, "one.sh": {"max_concurrent": 1}})
    return embedded_store


def settings_for(store, **values) -> Settings:
    return Settings(mongo_url=store.url, database=store.database_name, **values)


def test_threads_with_their_own_clients_never_run_more_than_the_limit_at_once(store, embedded_site):
    # given 24 runs of backup/* (limit 2) and 6 of report.sh (no limit), and 4 claimers, each with its own client
    settings = settings_for(store, concurrency_limits={"backup/*": 2})
    service = RunService(store, settings)
    for job in ["backup/db.sh", "backup/files.sh"] * 12 + ["report.sh"] * 6:
        service.queue(job, ManualTrigger())
    lock, running, peak, ended, errors = threading.Lock(), set(), [0], [], []

    def claimer(index: int) -> None:
        own = open_store(load_settings(embedded_site / "config.json", environ={},
                                       overrides={"database": store.database_name}))
        mine = RunService(own, settings)
        try:
            idle = 0
            while idle < 50:
                run = mine.claim(f"w{index}", [], lease_s=30)
                if run is None:
                    idle += 1
                    continue
                idle = 0
                if run.job.startswith("backup/"):
                    with lock:
                        running.add(run.id)
                        peak[0] = max(peak[0], len(running))
                    # the store agrees: never more than two backup runs are running
                    now_running = [r for r in own.runs.running() if r.job.startswith("backup/")]
                    if len(now_running) > 2:
                        errors.append(len(now_running))
                    with lock:
                        running.discard(run.id)
                mine.finish(run.id, RunStatus.SUCCEEDED)
                ended.append(run.id)
        except Exception as exc:  # noqa: BLE001 - reported by the test thread
            errors.append(exc)
        finally:
            own.close()

    threads = [threading.Thread(target=claimer, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)

    # then every run ran, and the limit held in every process's view
    assert not errors, errors
    assert len(ended) == 30
    assert 1 <= peak[0] <= 2
    assert store.limits.holders("backup/*", 2) == {}


def test_a_full_limit_leaves_the_run_queued_and_the_claim_takes_the_next_one(store):
    settings = settings_for(store, concurrency_limits={"tag:gpu": 1})
    service = RunService(store, settings)
    first, second = (service.queue("gpu.sh", ManualTrigger()) for _ in range(2))
    other = service.queue("report.sh", ManualTrigger())
    assert first.extra["requires"] == ["gpu"]

    # a worker without the tag sees none of the gpu runs
    assert service.claim_offers("cpu", []) == [Candidate.from_doc({**other.to_doc()})]
    # the gpu worker takes one gpu run; the second waits for the slot, so it takes the other run
    assert service.claim("g1", ["gpu"], lease_s=30).id == first.id
    with pytest.raises(LimitReached, match=r"tag:gpu \(at most 1\)"):
        service.take_offer(Candidate.from_doc(second.to_doc()), "g2", 30)
    assert service.claim("g2", ["gpu"], lease_s=30).id == other.id
    assert store.runs.find(second.id).status is RunStatus.QUEUED

    # when the first ends, its slot is free again
    service.finish(first.id, RunStatus.SUCCEEDED)
    assert service.claim("g2", ["gpu"], lease_s=30).id == second.id


def test_a_jobs_max_concurrent_holds_and_an_expired_lease_frees_its_slot(store):
    clock = FakeClock(store.clock.now())
    service = RunService(store, settings_for(store), clock)
    a, b = (service.queue("one.sh", ManualTrigger()) for _ in range(2))
    assert service.claim("w1", [], lease_s=30).id == a.id
    assert service.claim("w2", [], lease_s=30) is None  # the job's one slot is taken

    # when w1 dies and the scheduler marks its run lost, the slot is freed with it
    clock.advance(31)
    assert [r.id for r in service.expire_leases()] == [a.id]
    assert service.claim("w2", [], lease_s=30).id == b.id


def test_a_slot_whose_holder_vanished_is_repaired_when_the_limit_is_full(store):
    clock = FakeClock(store.clock.now())
    service = RunService(store, settings_for(store, concurrency_limits={"backup/*": 1}), clock)
    ended, crashed, waiting = (service.queue("backup/db.sh", ManualTrigger()) for _ in range(3))
    # a slot held by a run that ended without freeing it, and one whose claimer died before taking its run
    store.limits.acquire([("backup/*", 1)], ended.id, now=clock.now())
    store.runs.finish(ended.id, RunStatus.CANCELLED, now=clock.now(), only_from=frozenset({RunStatus.QUEUED}))
    assert service.claim("w1", [], lease_s=30).id == crashed.id  # the repair freed the ended run's slot
    service.finish(crashed.id, RunStatus.SUCCEEDED)

    store.limits.acquire([("backup/*", 1)], crashed.id + "-gone", now=clock.now())  # a run id that does not exist
    store.limits._repaired.clear()
    assert service.claim("w1", [], lease_s=30).id == waiting.id


def test_an_orphan_slot_of_a_queued_run_is_freed_only_once_it_is_old(store):
    clock = FakeClock(store.clock.now())
    service = RunService(store, settings_for(store, concurrency_limits={"backup/*": 1}), clock)
    orphan, other = (service.queue("backup/db.sh", ManualTrigger()) for _ in range(2))
    store.limits.acquire([("backup/*", 1)], orphan.id, now=clock.now())  # its claimer died right after
    store.limits._repaired.clear()
    with pytest.raises(LimitReached):  # a live claimer may be about to take it: kept
        service.take_offer(Candidate.from_doc(other.to_doc()), "w1", 30)
    clock.advance(ORPHAN_AFTER_S + 1)
    store.limits._repaired.clear()
    assert service.take_offer(Candidate.from_doc(other.to_doc()), "w1", 30).id == other.id


def test_a_worker_that_loses_the_run_frees_only_the_slot_it_took(store):
    # given a limit of 2 and a run w1 claimed (holding one slot)
    service = RunService(store, settings_for(store, concurrency_limits={"backup/*": 2}))
    run = service.queue("backup/db.sh", ManualTrigger())
    offer = Candidate.from_doc(run.to_doc())
    assert service.take_offer(offer, "w1", 30) is not None
    # when w2 tries the same run from its stale candidate list, it takes the other slot, loses the run, frees it
    assert service.take_offer(offer, "w2", 30) is None
    # then the winner still holds its slot, and only that one
    assert list(store.limits.holders("backup/*", 2).values()) == [run.id]


def test_take_offers_claims_the_free_runs_at_once_and_the_limited_ones_within_their_limit(store):
    # given a limited job (one.sh: max_concurrent 1) with one run held, and three runs without limits, one
    # of them taken meanwhile by another worker
    service = RunService(store, settings_for(store))
    held, waiting = (service.queue("one.sh", ManualTrigger()) for _ in range(2))
    free = [service.queue("report.sh", ManualTrigger()) for _ in range(3)]
    assert service.take_offer(Candidate.from_doc(held.to_doc()), "w0", 30) is not None
    assert service.take(free[1].id, "rival", 30) is not None
    offers = [Candidate.from_doc(run.to_doc()) for run in (free[0], waiting, free[1], free[2])]

    # when a worker takes all four offers
    full: set[str] = set()
    results = service.take_offers(offers, "w1", 30, full)

    # then, offer by offer: taken, kept queued by its limit, lost to the rival, taken
    assert [type(result).__name__ for result in results] == ["Run", "LimitReached", "NoneType", "Run"]
    assert [results[0].id, results[3].id] == [free[0].id, free[2].id]
    assert full == {"job:one.sh"} and store.runs.find(waiting.id).status is RunStatus.QUEUED
    assert [store.runs.find(run.id).worker for run in free] == ["w1", "rival", "w1"]


# -- where people set them ----------------------------------------------------------------------------
def test_requires_and_max_concurrent_are_set_by_the_api_and_the_job_page(mock_web_app, mock_store):
    from conftest import signed_in

    app, _, _ = mock_web_app
    mock_store.jobs.record_deployed("train.py", commit="c" * 40, blob="b" * 40)
    token, _ = mock_store.tokens.create("admin")
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    patched = client.patch("/api/v1/jobs/train.py", json={"requires": ["gpu", "eu"], "max_concurrent": 2})
    assert patched.status_code == 200, patched.text
    assert (patched.json["requires"], patched.json["max_concurrent"]) == (["gpu", "eu"], 2)
    refused = client.patch("/api/v1/jobs/train.py", json={"requires": ["a b"]})
    assert refused.status_code == 422 and "requires" in refused.json["error"]["details"]
    # a run queued now carries what dispatch needs
    run = RunService(mock_store).queue("train.py", ManualTrigger())
    assert (run.extra["requires"], run.extra["max_concurrent"]) == (["gpu", "eu"], 2)
    # and while no online worker has the tags, the API says so
    mock_store.workers.register("cpu1", instance="i", host="h", pid=1, capacity=4, tags=["eu"], version="0",
                                stale_after_s=30)
    waiting = client.get(f"/api/v1/runs/{run.id}/waiting")
    assert waiting.status_code == 200, waiting.text
    assert "no eligible worker online for tags gpu, eu" in waiting.text

    page = signed_in(app, "admin", "admin-password", "/jobs/train.py")
    form = {"csrf_token": page.csrf, "schedule": "", "timezone": "UTC", "worker": "", "hooks": "", "timeout_s": "",
            "overlap": "skip", "missed": "skip", "retry_attempts": "0", "requires": "gpu", "max_concurrent": ""}
    saved = page.post("/jobs/train.py", data=form)
    assert saved.status_code == 302, saved.text
    job = mock_store.jobs.get("train.py")
    assert (job.requires, job.max_concurrent) == (("gpu",), None)
    shown = page.get("/jobs/train.py").text
    assert 'name="requires" id="requires" value="gpu"' in shown
    bad = page.post("/jobs/train.py", data={**form, "max_concurrent": "many"})
    assert bad.status_code == 400 and "max_concurrent: must be a whole number" in bad.text


def test_sooner_job_set_takes_requires_and_max_concurrent(site):
    from conftest import run_sooner

    store = open_store(load_settings(site / "config.json", environ={}))
    store.jobs.record_deployed("train.py", commit="0123456789abcdef", blob="b1")
    store.close()
    result = run_sooner("job", "set", "train.py", "--requires", "gpu,eu", "--max-concurrent", "1", cwd=site)
    assert result.returncode == 0, result.stderr
    assert "requires=gpu,eu" in result.stdout and "max_concurrent=1" in result.stdout
    shown = run_sooner("job", "show", "train.py", cwd=site).stdout
    assert "with tags gpu, eu" in shown and "at once:   1" in shown
    bad = run_sooner("job", "set", "train.py", "--requires", "a b", cwd=site)
    assert bad.returncode == 1 and "requires: invalid tag 'a b'" in bad.stderr


def test_real_workers_run_a_limited_job_one_at_a_time_and_everything_else_beside_it(store, start_worker, tmp_path):
    # given two workers with three slots each, a job limited to one run at once and an unlimited one
    settings = settings_for(store, heartbeat_s=0.2, lease_s=5.0, shutdown_grace_s=2.0)
    deploy_files(store, {"one.sh": "#!/bin/sh\nsleep 0.2\n", "report.sh": "#!/bin/sh\nsleep 0.2\n"},
                 settings={"one.sh": {"max_concurrent": 1}})
    service = RunService(store, settings)
    limited = [service.queue("one.sh", ManualTrigger()).id for _ in range(4)]
    free = [service.queue("report.sh", ManualTrigger()).id for _ in range(4)]
    for name in ("a", "b"):
        start_worker(store, settings, name, 3, cache=tmp_path / f"cache-{name}")

    # when all have run
    from conftest import wait_for
    runs = wait_for(lambda: (found := [store.runs.find(i) for i in limited + free])
                    and all(r.status is RunStatus.SUCCEEDED for r in found) and found, 30,
                    message="every run to succeed")

    # then the limited runs never overlapped (each was claimed after the one before ended) …
    one = sorted((r for r in runs if r.job == "one.sh"), key=lambda r: r.claimed_at)
    assert all(later.claimed_at >= earlier.finished_at for earlier, later in zip(one, one[1:])), \
        [(r.worker, r.claimed_at, r.finished_at, r.extra.get("limit_slots")) for r in one]
    # … while the unlimited ones ran beside them
    others = [r for r in runs if r.job == "report.sh"]
    assert any(o.claimed_at < one[0].finished_at for o in others)
    assert store.limits.holders("job:one.sh", 1) == {}
