"""Live progress follows within ~100 ms: a throttle per run page and on the dashboard, the last value always sent.

The hub is driven by hand on a fake clock (mongomock; ``tick()`` is one step),
so the throttle is checked in fake time, never on the wall clock. End to end,
`sooner web` and `sooner worker` as real processes and the npm
socket.io-client following a script that reports progress every 300 ms: every
step must arrive as its own message (coalescing to about a second, as the
dashboard did, drops most of them).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import wait_for
from node.harness import follow_readme, live_site, node_client, start_run
from sooner.config import load_settings
from sooner.model import ManualTrigger, RunStatus
from sooner.runs.service import RunService
from sooner.store.changes import Change
from sooner.webapp import create_app

STEP_S = 0.02  # the fake time between two progress writes: faster than the hub's 100 ms throttle


@pytest.fixture
def live(clocked_store, fake_clock):
    settings = load_settings(None, environ={}, overrides={"secret_key": "k" * 40, "mongo_url": clocked_store.url})
    app, socketio = create_app(settings, clocked_store, live=False)
    clocked_store.jobs.record_deployed("a.sh", commit="c" * 40, blob="b" * 40)
    service = RunService(clocked_store)
    run = service.queue("a.sh", ManualTrigger(author="admin"))
    service.take(run.id, "w1", lease_s=60)
    clocked_store.runs.mark_started(run.id, pid=1, commit=None)
    hub = app.extensions["sooner"].hub
    clocked_store.users.add("viewer", "viewer-password")
    token, _ = clocked_store.tokens.create("viewer")
    socket = socketio.test_client(app, auth={"token": token})
    assert socket.is_connected()
    return SimpleNamespace(app=app, socketio=socketio, store=clocked_store, hub=hub, clock=fake_clock, run=run.id,
                           service=service, socket=socket)


def progress_of(messages: list[dict], event: str = "run") -> list[float]:
    """The progress values of the ``run`` messages (or of the snapshots' running runs) received."""
    values = []
    for message in messages:
        if message["name"] == event == "run" and message["args"][0]["progress"]:
            values.append(message["args"][0]["progress"]["current"])
        elif message["name"] == event == "dashboard":
            values += [r["progress"]["current"] for r in message["args"][0]["running"] if r["progress"]]
    return values


def write_steps(live, steps: int, event: str = "run") -> list[tuple[float, float]]:
    """Write progress 1..steps, STEP_S apart in fake time, ticking after each write and for 0.2 s after the
    last; returns (fake monotonic time, value) for each update the client got."""
    got: list[tuple[float, float]] = []
    for step in [*range(1, steps + 1), *([None] * 10)]:
        if step is not None:
            live.store.runs.set_progress(live.run, step, steps)
        live.hub.tick()
        received = live.socket.get_received()
        got += [(live.clock.monotonic(), value) for value in progress_of(received, event)]
        if event == "dashboard":
            got += [(live.clock.monotonic(), value) for value in progress_of(received, "run")]
        live.clock.advance(STEP_S)
    return got


def test_a_run_watcher_gets_progress_every_100_ms_and_the_last_value_always(live):
    # given a client following a running run
    assert live.socket.emit("join_run", {"run": live.run, "after_seq": -1}, callback=True)["ok"]
    live.socket.get_received()
    # when the worker writes 50 progress values 20 ms apart
    got = write_steps(live, 50)
    # then an update went out every 100 ms, each newer than the one before, the last one 50/50
    values = [value for _, value in got]
    assert values[-1] == 50 and values == sorted(set(values))
    gaps = [round(b - a, 6) for (a, _), (b, _) in zip(got, got[1:])]
    assert all(0.1 <= gap <= 0.1 + STEP_S for gap in gaps), gaps
    assert len(values) == 11  # 0, 0.1 … 0.9 s, and the last value once its gap ended


def test_a_throttled_change_goes_out_when_its_gap_ends_without_another_notice(live):
    # given change streams (no sweeps): the hub reads a run only when told it changed
    live.hub._streaming = dict.fromkeys(live.hub._streaming, True)
    live.hub.sweep_s = 1e9
    live.hub._last_sweep = live.clock.monotonic()
    live.socket.emit("join_run", {"run": live.run, "after_seq": -1}, callback=True)
    live.socket.get_received()
    changed = Change(kind="runs", operation="update", document_id=live.run, run_id=live.run)

    def write(value: int) -> list[float]:
        live.store.runs.set_progress(live.run, value, 10)
        live.hub._run_changed(changed)
        live.hub.tick()
        return progress_of(live.socket.get_received())
    assert write(1) == [1]
    live.clock.advance(STEP_S)
    assert write(2) == []  # inside the gap: held back
    live.clock.advance(0.05)
    live.hub.tick()
    assert progress_of(live.socket.get_received()) == []
    live.clock.advance(0.05)
    # when the gap is over, with no further change notice
    live.hub.tick()
    # then the held-back value goes out
    assert progress_of(live.socket.get_received()) == [2]


def test_a_finished_runs_last_output_goes_out_before_its_end(live):
    # given change streams, and a client following the run
    live.hub._streaming = dict.fromkeys(live.hub._streaming, True)
    live.hub.sweep_s = 1e9
    live.hub._last_sweep = live.clock.monotonic()
    live.socket.emit("join_run", {"run": live.run, "after_seq": -1}, callback=True)
    live.socket.get_received()
    # when the last lines are stored and the run ends, and only the end has been noticed yet
    live.store.output.append(live.run, [(0, "stdout", "last words\n", None), (1, "system", "exited\n", None)])
    live.service.finish(live.run, RunStatus.SUCCEEDED, exit_code=0)
    live.hub._run_changed(Change(kind="runs", operation="update", document_id=live.run, run_id=live.run))
    live.hub.tick()
    # then the lines come first, so a client that stops at the end has all of them
    received = [(m["name"], m["args"][0]) for m in live.socket.get_received()]
    assert [name for name, _ in received] == ["output", "run"]
    assert [c["text"] for c in received[0][1]["chunks"]] == ["last words\n", "exited\n"]
    assert received[1][1]["status"] == "succeeded"


def test_the_dashboard_follows_a_running_runs_progress_between_snapshots(live):
    # given a dashboard whose first snapshot shows the running run
    assert live.socket.emit("join_dashboard", {}, callback=True)["ok"]
    first = live.socket.get_received()
    assert [r["id"] for m in first if m["name"] == "dashboard" for r in m["args"][0]["running"]] == [live.run]
    # when the worker writes 50 values 20 ms apart (snapshots still go out every 0.5 s)
    got = write_steps(live, 50, "dashboard")
    # then no update waited for a snapshot: one at least every 100 ms (+ a tick), the last one 50/50
    got.sort()
    assert got[-1][1] == 50
    gaps = [round(b - a, 6) for (a, _), (b, _) in zip(got, got[1:])]
    assert max(gaps) <= 0.1 + STEP_S, gaps
    assert [value for _, value in got] == sorted(value for _, value in got)


# -- end to end ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def served(tmp_path_factory):
    with live_site(tmp_path_factory.mktemp("live-progress")) as site:
        yield site


@pytest.fixture(scope="session")
def node(tmp_path_factory) -> Path:
    return node_client(tmp_path_factory)


@pytest.mark.slow
def test_every_progress_step_of_a_script_that_steps_every_300_ms_reaches_an_npm_client(served, node, tmp_path):
    # given a client following a run that waits after its first step until the client has it
    token, _ = served.store.tokens.create("viewer", "progress")
    gate = tmp_path / "gate"
    run_id = start_run(served, {"lines": 10, "pause": 0.3, "gate": str(gate), "at": 1})
    follower = follow_readme(node, served, run_id, token)
    try:
        wait_for(lambda: "progress 1/10" in follower.stderr(), timeout=60, message="the first step")
        # when the script reports a step every 300 ms
        gate.touch()
        assert follower.wait(60) == 0, follower.stderr()
    finally:
        follower.stop()
    steps = [line for line in follower.stderr().splitlines() if line.startswith("progress ")]
    values = [int(line.split()[1].split("/")[0]) for line in steps]
    # each step as its own update (repeats come from other fields changing), in order, up to the last
    assert sorted(set(values)) == list(range(1, 11)), steps
    assert values == sorted(values)
