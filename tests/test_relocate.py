"""Moving runs to another worker or tag, and kill and relocate.

The service on mongomock with a FakeClock (claims by other workers, the race with a claim,
the relocation's links and notes), real workers on the embedded server running real scripts
(a moved run is taken by its new worker only; a relocated run is killed on one worker and
finishes on the other), the CLI through a real subprocess, the API and the run page's form
through the app's test client.
"""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest

from conftest import run_sooner, signed_in, wait_for
from sooner.config import Settings, load_settings
from sooner.errors import RunError
from sooner.model import FINISHED, ManualTrigger, Overlap, RelocateTrigger, RunStatus
from sooner.model.job_settings import InvalidJobSetting
from sooner.model.target import ANY_WORKER, describe_target, tag_target, worker_target
from sooner.runs.service import RunService
from sooner.store import open_store
from sooner.worker.testing import deploy_files

JOB = "batch/crunch.sh"


def deployed(store, job: str = JOB) -> None:
    store.jobs.record_deployed(job, commit="c" * 40, blob="b" * 40)


def register(store, name: str, tags: tuple[str, ...] = (), clock=None) -> None:
    store.workers.register(name, instance=name, host="h", pid=1, capacity=1, tags=list(tags), version="1",
                           stale_after_s=30, now=clock.now() if clock else None)


def claimable_by(service: RunService, run_id: str, worker: str, tags: tuple[str, ...] = ()) -> bool:
    return run_id in service.claim_candidates(worker, tags)


# -- the service (mongomock, fake clock) --------------------------------------------------------

def test_a_run_moved_to_a_worker_is_a_candidate_for_that_worker_only(clocked_store, service):
    # given a queued run any worker could take
    deployed(clocked_store)
    run = service.queue(JOB, ManualTrigger(author="alice"))
    assert claimable_by(service, run.id, "a")
    # when it is moved to worker b
    moved = service.move(run.id, worker_target("b"), by="alice")
    # then only b may take it, not a, nor a worker that carries a tag called "b"
    assert moved.run.target == "worker:b" and moved.run.status is RunStatus.QUEUED
    assert moved.run.note == "moved from any worker to worker 'b' by alice"
    assert not claimable_by(service, run.id, "a")
    assert not claimable_by(service, run.id, "c", ("b",))
    assert service.claim("a", [], lease_s=30) is None
    assert service.claim("b", [], lease_s=30).id == run.id


def test_a_run_moved_to_a_tag_goes_to_a_worker_with_the_tag_and_not_to_one_named_like_it(clocked_store, service):
    deployed(clocked_store)
    run = service.queue(JOB, ManualTrigger(), target="a")
    service.move(run.id, tag_target("gpu"), by="alice")
    assert not claimable_by(service, run.id, "a")
    assert not claimable_by(service, run.id, "gpu")
    assert claimable_by(service, run.id, "c", ("x", "gpu"))
    service.move(run.id, ANY_WORKER, by="alice")  # --any
    assert claimable_by(service, run.id, "a") and claimable_by(service, run.id, "zz")


def test_a_run_relocated_to_any_worker_goes_to_any_worker_even_when_its_job_names_one(clocked_store, service):
    # given a job pinned to worker a by its setting, and its run running there
    deployed(clocked_store)
    clocked_store.jobs.update_settings(JOB, {"worker": "a"})
    run = service.queue(JOB, ManualTrigger())
    service.take(run.id, "a", lease_s=30)
    # when it is killed and relocated to any worker
    new = service.relocate(run.id, ANY_WORKER, by="alice")
    # then any worker may take the new attempt, not only the job's
    assert new.target == ANY_WORKER and claimable_by(service, new.id, "zz")


def test_a_waiting_run_keeps_waiting_when_moved(clocked_store, service):
    deployed(clocked_store)
    clocked_store.jobs.update_settings(JOB, {"overlap": Overlap.QUEUE.value})
    service.queue(JOB, ManualTrigger())
    waiting = service.queue(JOB, ManualTrigger(), overlap_check=True)
    assert waiting.status is RunStatus.WAITING
    moved = service.move(waiting.id, worker_target("b"), by="alice")
    assert moved.run.status is RunStatus.WAITING and moved.run.target == "worker:b"


def test_a_run_claimed_while_it_is_being_moved_stays_where_it_started(clocked_store, service, monkeypatch):
    # given a queued run, and worker w2 claiming it between the move's read and its update
    deployed(clocked_store)
    run = service.queue(JOB, ManualTrigger())
    retarget = clocked_store.runs.retarget

    def claimed_first(*args, **kwargs):
        assert service.take(run.id, "w2", lease_s=30) is not None
        return retarget(*args, **kwargs)
    monkeypatch.setattr(clocked_store.runs, "retarget", claimed_first)
    # when it is moved to worker b
    with pytest.raises(RunError) as caught:
        service.move(run.id, worker_target("b"), by="alice")
    # then the move says so and changed nothing
    assert str(caught.value).startswith(f"run {run.id} started on worker w2 meanwhile; it was not moved")
    after = clocked_store.runs.get(run.id)
    assert (after.status, after.worker, after.target, after.cancel_requested) == (RunStatus.RUNNING, "w2", None, False)


def test_moving_a_running_run_needs_kill_and_a_finished_run_cannot_move(clocked_store, service):
    deployed(clocked_store)
    run = service.queue(JOB, ManualTrigger())
    service.take(run.id, "a", lease_s=30)
    with pytest.raises(RunError, match=r"is running on worker a; to stop it there and run it on worker 'b', "
                                       r"kill and relocate it instead"):
        service.move(run.id, worker_target("b"), by="alice")
    assert clocked_store.runs.get(run.id).cancel_requested is False
    service.finish(run.id, RunStatus.SUCCEEDED, exit_code=0)
    with pytest.raises(RunError, match="has already finished \\(succeeded\\); there is nothing to move"):
        service.move(run.id, worker_target("b"), by="alice", kill=True)
    with pytest.raises(RunError, match="is succeeded, not running"):
        service.relocate(run.id, worker_target("b"), by="alice")


def test_kill_and_relocate_cancels_the_run_and_queues_a_linked_attempt_on_the_new_target(clocked_store, service):
    # given a run with data, running on worker a
    deployed(clocked_store)
    run = service.queue(JOB, ManualTrigger(author="alice"), data={"batch": 7})
    service.take(run.id, "a", lease_s=30)
    # when it is killed and relocated to tag gpu
    moved = service.move(run.id, tag_target("gpu"), by="bob", kill=True)
    # then a new attempt with the same data is queued for the tag, linked to the old run both ways
    new, old = moved.run, moved.relocated_from
    assert new.id != run.id and new.status is RunStatus.QUEUED
    assert (new.data, new.target, new.attempt, new.chain) == ({"batch": 7}, "tag:gpu", 2, run.id)
    assert isinstance(new.trigger, RelocateTrigger) and new.trigger.source_run == run.id
    assert new.trigger.describe() == f"relocate of {run.ref} from worker a by bob"
    assert new.note == f"relocated from run {run.ref} on worker a by bob"
    # and the old run is asked to stop, pointing at its continuation
    assert old.cancel_requested and old.cancelled_by == "bob (relocated to tag 'gpu')"
    assert old.relocated_to == new.id and old.next_attempt == new.id
    assert old.note == f"relocating: cancelled by bob, continues as run {new.ref} on tag 'gpu'"
    assert not claimable_by(service, new.id, "a") and claimable_by(service, new.id, "b", ("gpu",))


def test_a_relocated_run_that_fails_as_it_is_killed_gets_no_retry_beside_its_new_attempt(clocked_store, service):
    # given a job with retries and a running run that is relocated
    deployed(clocked_store)
    clocked_store.jobs.update_settings(JOB, {"retry": {"attempts": 3}})
    run = service.queue(JOB, ManualTrigger())
    service.take(run.id, "a", lease_s=30)
    new = service.relocate(run.id, worker_target("b"), by="bob")
    # when the old script exits with an error before the cancel reaches it
    service.finish(run.id, RunStatus.FAILED, exit_code=1)
    # then the relocated attempt is the only active run of the job
    active = [r for r in clocked_store.runs.list(job=JOB) if r.active]
    assert [r.id for r in active] == [new.id]


def test_a_target_nobody_serves_is_accepted_with_a_warning(clocked_store, service, fake_clock):
    deployed(clocked_store)
    register(clocked_store, "a", ("cpu",), fake_clock)
    run = service.queue(JOB, ManualTrigger())
    unknown = service.move(run.id, worker_target("later"), by="alice")
    assert unknown.warning == ("no worker named 'later' is online (none is known yet; it may come online later); "
                               "the run waits until one starts (`sooner worker -n later`)")
    assert service.move(run.id, tag_target("cpu"), by="alice").warning is None
    assert service.move(run.id, worker_target("a"), by="alice").warning is None
    fake_clock.advance(3600)  # a's heartbeat is old now: known, but not online
    assert service.move(run.id, worker_target("a"), by="alice").warning == (
        "no worker named 'a' is online; the run waits until one starts (`sooner worker -n a`)")


@pytest.mark.parametrize("make, name, message", [
    (worker_target, "", "worker: a worker needs a name, got ''"),
    (worker_target, "a b", "worker: invalid worker name 'a b'"),
    (tag_target, "tag:x", "tag: invalid tag 'tag:x'"),
])
def test_target_names_are_validated(make, name, message):
    with pytest.raises(InvalidJobSetting) as caught:
        make(name)
    assert str(caught.value).startswith(message)


def test_targets_read_as_words():
    assert [describe_target(t) for t in (None, ANY_WORKER, "worker:b", "tag:gpu", "gpu")] == [
        "any worker", "any worker", "worker 'b'", "tag 'gpu'", "worker or tag 'gpu'"]


# -- real workers on the embedded server --------------------------------------------------------

@pytest.fixture
def worker_settings(embedded_store) -> Settings:
    return Settings(mongo_url=embedded_store.url, database=embedded_store.database_name, heartbeat_s=0.2, lease_s=5.0,
                    cancel_grace_s=1.0, shutdown_grace_s=2.0, output_flush_ms=50)


def finished(store, run_id: str, timeout: float = 30):
    return wait_for(lambda: (r := store.runs.get(run_id)).status in FINISHED and r, timeout,
                    message=f"run {run_id} to finish")


SCRIPT = f"""#!{sys.executable}
import os, time
worker = os.environ["SOONER_WORKER"]
print("on", worker, flush=True)
if worker == "a":  # stay on a until killed, so only a relocation can finish it
    time.sleep(60)
"""


def test_moved_runs_are_taken_by_their_new_worker_and_never_by_another(embedded_store, worker_settings, start_worker):
    # given workers a and b (b tagged gpu) idle, and runs aimed at a worker that does not exist
    deploy_files(embedded_store, {JOB: SCRIPT.replace('worker == "a"', "False")})
    service = RunService(embedded_store, worker_settings)
    runs = [service.queue(JOB, ManualTrigger(), target=worker_target("nobody")) for _ in range(4)]
    start_worker(embedded_store, worker_settings, "a", 4)
    start_worker(embedded_store, worker_settings, "b", 4, tags=["gpu"])
    # when they are moved to b, by name and by tag
    for i, run in enumerate(runs):
        service.move(run.id, worker_target("b") if i % 2 else tag_target("gpu"), by="alice")
    # then b ran every one of them
    for run in runs:
        done = finished(embedded_store, run.id)
        assert (done.status, done.worker) == (RunStatus.SUCCEEDED, "b"), done


def test_a_running_run_killed_and_relocated_ends_cancelled_and_runs_again_on_the_new_worker(
        embedded_store, worker_settings, start_worker):
    # given a script running on worker a that would not end there by itself
    deploy_files(embedded_store, {JOB: SCRIPT})
    service = RunService(embedded_store, worker_settings)
    start_worker(embedded_store, worker_settings, "a", 1)
    start_worker(embedded_store, worker_settings, "b", 1)
    run = service.queue(JOB, ManualTrigger(), data={"batch": 1}, target=worker_target("a"))
    wait_for(lambda: "on a" in "".join(c["text"] for c in embedded_store.output.read(run.id)), 30,
             message="the script to start on a")
    # when it is killed and relocated to b
    new = service.move(run.id, worker_target("b"), by="alice", kill=True).run
    # then a stops it (cancelled, with the relocation in its note) and b runs the new attempt to its end
    old = finished(embedded_store, run.id)
    assert old.status is RunStatus.CANCELLED and "relocated to worker 'b'" in old.note
    assert old.relocated_to == new.id
    done = finished(embedded_store, new.id)
    assert (done.status, done.worker, done.data) == (RunStatus.SUCCEEDED, "b", {"batch": 1})
    assert "on b" in "".join(c["text"] for c in embedded_store.output.read(new.id))


# -- the CLI (a real subprocess) ----------------------------------------------------------------

@pytest.fixture
def site_store(site):
    store = open_store(load_settings(site / "config.json", environ={}))
    deployed(store)
    yield store
    store.close()


def sooner(site, *args: str):
    return run_sooner(*args, cwd=site, env={"USER": "alice"})


def test_cli_moves_a_queued_run_and_warns_about_an_unknown_worker(site, site_store):
    run = RunService(site_store).queue(JOB, ManualTrigger())
    to_worker = sooner(site, "move", run.id[:12], "--worker", "b")
    assert to_worker.returncode == 0, to_worker.stderr
    assert to_worker.stdout.strip() == f"moved run {run.ref} to worker 'b'"
    assert "warning: no worker named 'b' is online (none is known yet; it may come online later)" in to_worker.stderr
    assert site_store.runs.get(run.id).target == "worker:b"
    assert sooner(site, "move", run.id, "--tag", "gpu").returncode == 0
    assert site_store.runs.get(run.id).target == "tag:gpu"
    assert sooner(site, "move", run.id, "--any").returncode == 0
    assert site_store.runs.get(run.id).target == ANY_WORKER


@pytest.mark.parametrize("args, code, message", [
    ([], 2, "give exactly one of --worker NAME, --tag TAG or --any"),
    (["--worker", "b", "--any"], 2, "give exactly one of"),
    (["--worker", "a b"], 1, "--worker: invalid worker name 'a b'"),
    (["--tag", ""], 1, "--tag: a worker needs a name"),
])
def test_cli_refuses_a_bad_target_in_one_line(site, site_store, args, code, message):
    run = RunService(site_store).queue(JOB, ManualTrigger())
    result = sooner(site, "move", run.id, *args)
    assert result.returncode == code and message in result.stderr and "Traceback" not in result.stderr
    assert site_store.runs.get(run.id).target is None


def test_cli_relocates_a_running_run_only_with_kill(site, site_store):
    service = RunService(site_store)
    run = service.queue(JOB, ManualTrigger())
    service.take(run.id, "w1", lease_s=300)
    refused = sooner(site, "move", run.id, "--worker", "b")
    assert refused.returncode == 1 and f"run {run.id} is running on worker w1" in refused.stderr
    assert "--kill" in refused.stderr
    relocated = sooner(site, "move", run.id, "--worker", "b", "--kill")
    assert relocated.returncode == 0, relocated.stderr
    new_id = site_store.runs.get(run.id).relocated_to
    new_ref = site_store.runs.get(new_id).ref
    assert relocated.stdout.strip() == (f"run {run.ref} is being stopped on worker w1; it continues as run {new_ref} "
                                        f"on worker 'b'")
    service.finish(run.id, RunStatus.CANCELLED)
    finished_run = sooner(site, "move", run.id, "--any")
    assert finished_run.returncode == 1 and "has already finished (cancelled)" in finished_run.stderr
    assert sooner(site, "move", "0" * 24, "--any").stderr.strip().endswith("no run with id '" + "0" * 24
                                                                            + "' (see `sooner runs`)")


# -- the API and the run page (Flask test client) ------------------------------------------------

@pytest.fixture
def web(mock_store, mock_web_app):
    app, _, _ = mock_web_app
    deployed(mock_store)
    admin, _ = mock_store.tokens.create("admin")
    viewer, _ = mock_store.tokens.create("viewer")
    return SimpleNamespace(app=app, store=mock_store, service=RunService(mock_store),
                           admin={"Authorization": f"Bearer {admin}"}, viewer={"Authorization": f"Bearer {viewer}"})


def test_api_moves_a_queued_run_to_a_worker_a_tag_or_any(web):
    run = web.service.queue(JOB, ManualTrigger())
    client = web.app.test_client()
    url = f"/api/runs/{run.id}/move"
    to_worker = client.post(url, json={"worker": "b"}, headers=web.admin)
    assert to_worker.status_code == 200, to_worker.json
    assert to_worker.json["run"]["target"] == "worker:b" and to_worker.json["relocated_from"] is None
    assert "no worker named 'b' is online" in to_worker.json["warning"]
    assert client.post(url, json={"tag": "gpu"}, headers=web.admin).json["run"]["target"] == "tag:gpu"
    assert client.post(url, json={"any": True}, headers=web.admin).json["run"]["target"] == ANY_WORKER
    assert client.post(url, json={"any": True}, headers=web.viewer).status_code == 403
    assert client.post("/api/runs/" + "0" * 24 + "/move", json={"any": True}, headers=web.admin).status_code == 404


@pytest.mark.parametrize("body, message", [
    ({}, 'give exactly one of "worker": "NAME", "tag": "TAG" or "any": true'),
    ({"worker": "b", "tag": "gpu"}, "give exactly one of"),
    ({"any": "yes"}, "give exactly one of"),
    ({"worker": "b", "kill": "no"}, "give exactly one of"),
    ({"worker": "a b"}, "worker: invalid worker name 'a b'"),
    ({"worker": {"$ne": None}}, "worker: must be a string, got dict"),
    ({"tag": 5}, "tag: must be a string, got int"),
    ({"tag": "a:b"}, "tag: invalid tag 'a:b'"),
    ({"to": "b"}, 'unknown field(s) to: only "worker", "tag", "any", "kill" are accepted'),
])
def test_api_refuses_a_bad_move_body_with_400_and_a_message(web, body, message):
    run = web.service.queue(JOB, ManualTrigger())
    answer = web.app.test_client().post(f"/api/runs/{run.id}/move", json=body, headers=web.admin)
    assert answer.status_code == 400 and message in answer.json["error"], answer.json
    assert web.store.runs.get(run.id).target is None


def test_api_relocates_a_running_run_only_with_kill(web):
    run = web.service.queue(JOB, ManualTrigger(), data={"n": 1})
    web.service.take(run.id, "a", lease_s=300)
    client = web.app.test_client()
    refused = client.post(f"/api/runs/{run.id}/move", json={"worker": "b"}, headers=web.admin)
    assert refused.status_code == 409 and "is running on worker a" in refused.json["error"]
    relocated = client.post(f"/api/runs/{run.id}/move", json={"worker": "b", "kill": True}, headers=web.admin)
    assert relocated.status_code == 200
    new, old = relocated.json["run"], relocated.json["relocated_from"]
    assert new["data"] == {"n": 1} and new["target"] == "worker:b" and new["trigger"]["type"] == "relocate"
    assert old["id"] == run.id and old["relocated_to"] == new["id"]


def test_run_page_offers_the_move_form_with_csrf_and_moves_the_run(web):
    queued = web.service.queue(JOB, ManualTrigger())
    running = web.service.queue(JOB, ManualTrigger())
    web.service.take(running.id, "a", lease_s=300)
    client = signed_in(web.app, "admin", "admin-password", f"/runs/{queued.id}")
    page = client.get(f"/runs/{queued.id}").text
    assert 'id="move-form"' in page and 'name="csrf_token"' in page and ">Move</button>" in page
    assert "Kill and relocate" in client.get(f"/runs/{running.id}").text
    # without the CSRF token nothing moves
    forged = client.post(f"/runs/{queued.id}", data={"action": "move", "to": "worker", "name": "b"})
    assert forged.status_code in (400, 403) and web.store.runs.get(queued.id).target is None
    # with it the run moves, and the page says where it went
    moved = client.post(f"/runs/{queued.id}", data={"csrf_token": client.csrf, "action": "move", "to": "worker",
                                                    "name": "b"})
    assert moved.status_code == 302 and web.store.runs.get(queued.id).target == "worker:b"
    assert "worker &#39;b&#39;" in client.get(f"/runs/{queued.id}").text
    bad = client.post(f"/runs/{queued.id}", data={"csrf_token": client.csrf, "action": "move", "to": "worker",
                                                  "name": "<b>"}, headers={"X-Requested-With": "fetch"})
    assert bad.status_code == 400 and "invalid worker name" in bad.json["error"]
    # a running run is relocated by its form and the browser goes to the new attempt
    relocated = client.post(f"/runs/{running.id}", data={"csrf_token": client.csrf, "action": "move", "to": "any",
                                                         "kill": "on"})
    new_id = web.store.runs.get(running.id).relocated_to
    assert relocated.status_code == 302 and relocated.headers["Location"].endswith(f"/runs/{new_id}")
    web.service.finish(queued.id, RunStatus.CANCELLED)
    assert 'id="move-form"' not in client.get(f"/runs/{queued.id}").text


def test_a_viewer_sees_no_move_form_and_cannot_move(web):
    run = web.service.queue(JOB, ManualTrigger())
    client = signed_in(web.app, "viewer", "viewer-password", f"/runs/{run.id}")
    assert 'id="move-form"' not in client.get(f"/runs/{run.id}").text
    denied = client.post(f"/runs/{run.id}", data={"csrf_token": client.csrf, "action": "move", "to": "any"})
    assert denied.status_code == 403 and web.store.runs.get(run.id).note is None
