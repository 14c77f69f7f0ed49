"""The worker, in-process on the embedded store, running real scripts in real subprocesses.

Jobs are deployed straight into the store with :func:`sooner.worker.testing.deploy_files`
(the same blobs/trees a git push stores); each test waits on conditions with deadlines.
"""

from __future__ import annotations

import os
import stat
import sys
import threading
from pathlib import Path

import pytest

from conftest import wait_for
from sooner.config import Settings
from sooner.errors import WorkerError
from sooner.model import FINISHED, ManualTrigger, Progress, Run, RunStatus
from sooner.runs.service import RunService
from sooner.worker.loop import Worker
from sooner.worker.testing import SYMLINK, deploy_files
from sooner.worker.tree import TreeCache

SCRIPTS = Path(__file__).resolve().parent / "scripts"
PY = f"#!{sys.executable}\n"


def script(name: str) -> str:
    """A script from tests/scripts with this interpreter in its shebang."""
    return PY + (SCRIPTS / name).read_text().split("\n", 1)[1]


@pytest.fixture
def settings(embedded_store) -> Settings:
    return Settings(mongo_url=embedded_store.url, database=embedded_store.database_name, heartbeat_s=0.2, lease_s=2.0,
                    cancel_grace_s=1.0, shutdown_grace_s=2.0, output_flush_ms=50, chain_depth_limit=3)


@pytest.fixture
def store(embedded_store):
    return embedded_store


@pytest.fixture
def service(store, settings) -> RunService:
    return RunService(store, settings)


@pytest.fixture
def make_worker(store, settings, start_worker, tmp_path):
    """Start a registered worker whose run_forever loop runs on a thread; stopped at teardown."""
    def make(name: str = "w1", capacity: int = 4, tags: tuple[str, ...] = (), start: bool = True) -> Worker:
        return start_worker(store, settings, name, capacity, tags=tags, start=start, cache=tmp_path / "cache")
    return make


def finished(store, run_id: str, timeout: float = 20) -> Run:
    return wait_for(lambda: (r := store.runs.get(run_id)).status in FINISHED and r, timeout,
                    message=f"run {run_id} to finish")


def start(store, job: str, data=None, **options) -> str:
    run = RunService(store).queue(job, ManualTrigger(), data=data, **options)
    assert run is not None
    return run.id


def output(store, run_id: str) -> list[dict]:
    return store.output.read(run_id)


def text_of(store, run_id: str, stream: str | None = None) -> str:
    return "".join(c["text"] for c in output(store, run_id) if stream in (None, c["stream"]))


def test_bash_script_reports_over_stderr_and_socket_with_changing_max(store, make_worker):
    # given a bash job using both channels (the socket through a Python one-liner)
    deploy_files(store, {"jobs/report.sh": f"""#!/bin/bash
echo "hello from $SOONER_JOB in $(basename "$PWD")"
echo ">>> sooner.progress(1, 10)" >&2
echo "a warning" >&2
{sys.executable} -c 'from sooner import api; api.progress(4, 10)'
echo ">>> sooner.progress(5, 20)" >&2
echo done
"""})
    make_worker()
    # when it runs
    run = finished(store, start(store, "jobs/report.sh"))
    # then it succeeded with the last progress (the max changed) and its output in order
    assert run.status == "succeeded" and run.exit_code == 0
    assert run.progress == Progress(5, 20)
    chunks = output(store, run.id)
    assert [c["seq"] for c in chunks] == list(range(len(chunks)))
    assert text_of(store, run.id, "stdout").startswith("hello from jobs/report.sh in ")
    assert text_of(store, run.id, "stdout").endswith("done\n")
    assert text_of(store, run.id, "stderr") == "a warning\n"  # calls are not output
    system = text_of(store, run.id, "system")
    assert f"sooner: run {run.id} of jobs/report.sh on worker w1 (commit {run.commit[:8]})" in system
    assert "sooner: exited with code 0 after" in system
    assert run.pid and run.started_at and run.worker == "w1"


def test_python_script_uses_sooner_api_and_emit_starts_a_hooked_job_with_data(store, make_worker):
    # given a Python job using sooner.api, and a job hooked to the event it emits
    deploy_files(store, {"api.py": script("worker_api_job.py"), "hooked.py": script("worker_api_job.py")},
                 hooks={"hooked.py": ["api-done"]})
    make_worker()
    # when the first job runs with data asking it to emit
    run = finished(store, start(store, "api.py", {"emit": "api-done", "n": 1}))
    # then its socket calls and its stderr call took effect
    assert run.status == "succeeded", text_of(store, run.id)
    assert run.progress == Progress(5, 20)
    assert store.events.list(name="api-job:stderr")[0]["data"] == {"via": "stderr"}
    out = text_of(store, run.id, "stdout")
    assert f"run {run.id} job api.py data " + '{"emit": "api-done", "n": 1}' in out
    assert "argv1 is the socket: True" in out and "emitted api-done: 1 run(s)" in out
    # and the hooked job ran with the event's data
    event = store.events.list(name="api-done")[0]
    assert event["source"] == {"type": "run", "run": run.id, "job": "api.py"} and event["depth"] == 1
    hooked = finished(store, event["runs"][0])
    assert hooked.trigger.event == "api-done" and hooked.data == {"from": "api.py", "n": 2}
    assert 'data {"from": "api.py", "n": 2}' in text_of(store, hooked.id, "stdout")


def test_emit_chain_a_to_b_to_c_carries_data(store, make_worker):
    step = script("worker_chain_step.py")
    deploy_files(store, {"a.py": step, "b.py": step, "c.py": step}, hooks={"b.py": ["a-done"], "c.py": ["b-done"]})
    make_worker()
    finished(store, start(store, "a.py", {"path": []}))
    c_run = wait_for(lambda: store.runs.list(job="c.py"), message="c.py to be queued")[0]
    c_run = finished(store, c_run.id)
    assert c_run.status == "succeeded" and c_run.depth == 2
    assert c_run.data == {"path": ["a.py", "b.py"]}
    assert 'c.py got {"path": ["a.py", "b.py"]}' in text_of(store, c_run.id)


def test_event_cycle_stops_at_the_depth_limit_with_a_note(store, make_worker, settings):
    step = script("worker_chain_step.py")
    deploy_files(store, {"a.py": step, "b.py": step}, hooks={"b.py": ["a-done"], "a.py": ["b-done"]})
    make_worker()
    start(store, "a.py")
    # A(0) -> B(1) -> A(2) -> B(3) emits at depth 4 > limit 3: no further run
    last = wait_for(lambda: [r for r in store.runs.list(limit=10) if r.depth == 3], message="depth 3 run")[0]
    last = finished(store, last.id)
    wait_for(lambda: all(r.status in FINISHED for r in store.runs.list(limit=10)))
    assert len(store.runs.list(limit=10)) == 4
    assert last.job == "b.py" and "chain depth limit (3) reached" in last.note
    assert "is there a cycle" in store.events.list(name="b-done")[0]["note"]


def test_malformed_stderr_calls_are_kept_as_output_with_a_note(store, make_worker):
    deploy_files(store, {"bad.sh": """#!/bin/sh
echo '>>> sooner.progress("half")' >&2
echo '>>> sooner.launch()' >&2
echo '>>> sooner.emit("no spaces allowed")' >&2
echo '>>> sooner.progress(1,' >&2
echo '>>> sooner.progress(2, 4)' >&2
echo ok
"""})
    make_worker()
    run = finished(store, start(store, "bad.sh"))
    assert run.status == "succeeded" and run.progress == Progress(2, 4)
    text = text_of(store, run.id)
    for line in ('>>> sooner.progress("half")', ">>> sooner.launch()", '>>> sooner.emit("no spaces allowed")',
                 ">>> sooner.progress(1,"):
        assert line + "\n" in text_of(store, run.id, "stderr")
    assert text.count("sooner: ignored malformed call: ") == 4
    assert "unknown method 'launch'" in text and "invalid event name" in text
    assert ">>> sooner.progress(2, 4)" not in text


def test_exit_codes_and_signals_decide_the_status(store, make_worker):
    deploy_files(store, {"three.sh": "#!/bin/sh\necho failing >&2\nexit 3\n", "killed.sh": "#!/bin/sh\nkill -9 $$\n",
                         "badshebang.sh": "#!/nonexistent/interpreter\n"})
    store.jobs.record_deployed("missing.sh", commit="x", blob="y")  # a job whose file is not in the tree
    make_worker()
    three = finished(store, start(store, "three.sh"))
    killed = finished(store, start(store, "killed.sh"))
    assert (three.status, three.exit_code) == ("failed", 3)
    assert (killed.status, killed.exit_code, killed.note) == ("failed", -9, "killed by SIGKILL")
    assert "sooner: killed by SIGKILL after" in text_of(store, killed.id)
    bad = finished(store, start(store, "badshebang.sh"))
    assert bad.status == "failed" and "the interpreter on its #! line was not found" in bad.note
    missing = finished(store, start(store, "missing.sh"))
    assert missing.status == "failed" and "is not in the deployed tree" in missing.note
    wait_for(lambda: store.events.list(name="job:three.sh:failed"), message="the failed event")


def test_run_without_a_deployed_commit_fails_clearly(store, make_worker):
    store.jobs.record_deployed("early.sh", commit="c0", blob="b0")
    run_id = start(store, "early.sh")  # nothing deployed yet: the run has no commit
    assert store.runs.get(run_id).commit is None
    make_worker()
    run = finished(store, run_id)
    assert run.status == "failed"
    assert run.note == "job 'early.sh' has no deployed commit yet: push the scripts repository first"
    assert "no deployed commit" in text_of(store, run.id, "system")


def test_cancel_sends_sigterm_to_the_process_group(store, make_worker, service):
    deploy_files(store, {"slow.sh": "#!/bin/sh\necho started\nsleep 30 &\nwait\n"})
    make_worker()
    run_id = start(store, "slow.sh")
    wait_for(lambda: "started" in text_of(store, run_id), message="the script to start")
    service.cancel(run_id, by="alice")
    run = finished(store, run_id)
    assert (run.status, run.exit_code, run.note) == ("cancelled", -15, "cancelled by alice")
    assert run.duration_s < 5
    assert "sooner: cancelled by alice; sending SIGTERM" in text_of(store, run_id)
    wait_for(lambda: not group_alive(run.pid), 5, message="the background sleep to get SIGTERM too")


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def test_cancel_kills_a_script_that_ignores_sigterm_after_the_grace(store, make_worker, settings, service):
    deploy_files(store, {"stubborn.sh": "#!/bin/bash\ntrap 'echo got TERM' TERM\necho started\n"
                                        "for i in $(seq 300); do sleep 0.1; done\n"})
    make_worker()
    run_id = start(store, "stubborn.sh")
    wait_for(lambda: "started" in text_of(store, run_id), message="the script to start")
    service.cancel(run_id, by="cli")
    run = finished(store, run_id)
    assert (run.status, run.exit_code) == ("cancelled", -9)
    assert settings.cancel_grace_s <= run.duration_s < settings.cancel_grace_s + 5
    text = text_of(store, run_id)
    assert "got TERM" in text and "sending SIGKILL" in text


def test_timeout_ends_the_run_as_timed_out(store, make_worker):
    deploy_files(store, {"forever.sh": "#!/bin/sh\necho started\nexec sleep 30\n"},
                 settings={"forever.sh": {"timeout_s": 0.5}})
    make_worker()
    run = finished(store, start(store, "forever.sh"))
    assert (run.status, run.exit_code, run.note) == ("timed_out", -15, "timed out after 0.5s")
    assert 0.45 <= run.duration_s < 3  # BSON keeps milliseconds
    event = wait_for(lambda: store.events.list(name="job:forever.sh:failed"), message="the failed event")[0]
    assert event["data"]["status"] == "timed_out"  # emitted after the status is set


def test_tree_is_materialised_with_modes_and_symlinks(store, make_worker, tmp_path):
    deploy_files(store, {"bin/check.sh": """#!/bin/sh
test -x bin/tool.sh && echo tool-executable
test -x lib/data.txt || echo data-not-executable
echo "link -> $(readlink lib/link.txt): $(cat lib/link.txt)"
./bin/tool.sh
""", "bin/tool.sh": "#!/bin/sh\necho tool ran\n", "lib/data.txt": "some data", "lib/link.txt": ("data.txt", SYMLINK)})
    make_worker()
    run = finished(store, start(store, "bin/check.sh"))
    assert text_of(store, run.id, "stdout") == ("tool-executable\ndata-not-executable\n"
                                                   "link -> data.txt: some data\ntool ran\n")
    tree = next((tmp_path / "cache" / "trees").iterdir())
    assert stat.S_IMODE((tree / "lib" / "data.txt").stat().st_mode) == 0o644
    assert (tree / "lib" / "link.txt").is_symlink()


def test_concurrent_materialisers_share_one_tree(store, tmp_path):
    deploy = deploy_files(store, {f"dir{i}/file{j}.txt": f"{i}-{j}" for i in range(5) for j in range(5)})
    caches = [TreeCache(store, tmp_path / "shared") for _ in range(4)]  # as if four worker processes
    paths: list[Path] = []
    threads = [threading.Thread(target=lambda c=c: paths.append(c.path_for(deploy["commit"]))) for c in caches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(set(paths)) == 1 and (paths[0] / "dir3" / "file4.txt").read_text() == "3-4"
    assert [p.name for p in (tmp_path / "shared" / "trees").iterdir()] == [deploy["tree"]]  # no temporary left


def test_a_live_worker_keeps_its_name(store, make_worker, settings, tmp_path):
    make_worker("w1", start=False)
    with pytest.raises(WorkerError, match="a worker named 'w1' is already running"):
        Worker(store, settings, "w1", cache=tmp_path / "c").register()


def test_heartbeat_records_runs_and_stats_and_notices_a_lost_name(store, make_worker):
    deploy_files(store, {"wait.sh": "#!/bin/sh\necho started\nsleep 30\n"})
    worker = make_worker("w1", start=False)
    run = store.runs.get(start(store, "wait.sh"))
    assert worker.run_once().id == run.id
    assert worker.run_once() is None  # nothing else queued
    assert worker.heartbeat()
    doc = store.workers.get("w1")
    assert doc.running == (run.id,) and doc.rss_bytes > 0 and doc.cpu_percent is not None
    assert store.runs.get(run.id).lease_until > run.queued_at
    # another process takes the name (as after a long pause): the worker notices and claims nothing more
    store.workers.collection.update_one({"_id": "w1"}, {"$set": {"instance": "someone-else"}})
    assert not worker.heartbeat() and worker.lost_name
    start(store, "wait.sh")
    assert worker.run_once() is None
    worker.shutdown(grace_s=0)
    assert store.runs.get(run.id).status == "cancelled"


def test_shutdown_cancels_runs_left_after_the_grace_and_unregisters(store, make_worker):
    deploy_files(store, {"wait.sh": "#!/bin/sh\necho started\nsleep 30\n", "quick.sh": "#!/bin/sh\nsleep 0.3\n"})
    worker = make_worker("w1", start=False)
    slow, quick = start(store, "wait.sh"), start(store, "quick.sh")
    assert worker.run_once() and worker.run_once()
    worker.shutdown(grace_s=1.0)
    assert store.runs.get(quick).status == "succeeded"
    assert (store.runs.get(slow).status, store.runs.get(slow).note) == ("cancelled", "worker shut down")
    assert store.workers.get("w1").stopped_at is not None and not store.runs.running()


def test_capacity_and_tags_limit_what_a_worker_claims(store, make_worker):
    deploy_files(store, {"wait.sh": "#!/bin/sh\nsleep 30\n"})
    worker = make_worker("w1", capacity=2, tags=("gpu",), start=False)
    other = start(store, "wait.sh", target="w2")
    runs = [start(store, "wait.sh") for _ in range(2)]
    tagged = start(store, "wait.sh", target="gpu")
    claimed = [worker.run_once(), worker.run_once(), worker.run_once()]
    assert [r.id for r in claimed[:2]] == runs and claimed[2] is None  # full at 2
    worker.cancel_all("test over")
    assert worker.wait_idle(10)
    assert worker.run_once().id == tagged  # by tag, never the run for w2
    assert worker.run_once() is None and store.runs.get(other).status == "queued"
    worker.shutdown(grace_s=0)


def test_a_restarted_worker_marks_its_predecessors_runs_lost(store, make_worker, settings, service):
    deploy_files(store, {"wait.sh": "#!/bin/sh\nsleep 30\n"}, settings={"wait.sh": {"retry": {"attempts": 1,
                                                                                             "delay_s": 0}}})
    run = store.runs.get(start(store, "wait.sh"))
    assert service.take(run.id, "w1", settings.lease_s)  # claimed by a w1 that then died
    store.workers.register("w1", instance="dead", host="h", pid=1, capacity=1, tags=[], version="0",
                           stale_after_s=settings.lease_s)
    store.workers.collection.update_one({"_id": "w1"}, {"$set": {"heartbeat_at": run.queued_at.replace(year=2000)}})
    make_worker("w1", start=False)
    lost = store.runs.get(run.id)
    assert (lost.status, lost.note.split(";")[0]) == ("lost", "worker w1 restarted while it ran")
    assert store.runs.list(job="wait.sh", status="queued")[0].trigger.type == "retry"


def test_a_run_ended_elsewhere_is_stopped_here(store, make_worker, service):
    # given a running script whose run is marked lost (as the scheduler does when leases expire)
    deploy_files(store, {"wait.sh": "#!/bin/sh\necho started\nsleep 30\n"})
    worker = make_worker("w1", start=False)
    run_id = start(store, "wait.sh")
    assert worker.run_once()
    wait_for(lambda: "started" in text_of(store, run_id), message="the script to start")
    service.finish(run_id, RunStatus.LOST, note="lost: test")
    # when the worker heartbeats, then it stops its copy and keeps the recorded status
    worker.heartbeat()
    assert worker.wait_idle(10)
    run = store.runs.get(run_id)
    assert (run.status, run.note) == ("lost", "lost: test")
    assert "the run was ended elsewhere" in text_of(store, run_id)
    worker.shutdown(grace_s=0)
