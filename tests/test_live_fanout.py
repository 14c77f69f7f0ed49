"""Live fan-out (issue #12): many clients of one run cost one read per tick, and each gets every chunk once, in order.

In-process on mongomock with a fake clock (the hub is stepped with ``tick()``):
however many clients watch a run, a tick reads its output once and emits one
``output`` message to the room; a throttled room wakes the loop when its gap
ends; the change-feed watchers run only while someone watches; a feed whose
server answers at once (nx-27017) is asked again after a pause, not in a spin.
End to end: the app behind a real HTTP server on the embedded nx-27017 server
(change streams on), 20 npm socket.io-client connections joining while chunks
are appended: every client gets chunks 0..N exactly once and in order, and the
hub's output reads stay at most one per tick.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import CountingStop, served, wait_for
from node.harness import NodeScript, node_client
from sooner.config import load_settings
from sooner.model import ManualTrigger
from sooner.runs.service import RunService
from sooner.store.changes import IDLE_POLL_S, ChangeStream, Changes
from sooner.webapp import create_app
from sooner.webapp.live import run_room

CLIENTS = 25


def app_on(store, *, live: bool):
    settings = load_settings(None, environ={}, overrides={"secret_key": "k" * 40, "mongo_url": store.url})
    app, socketio = create_app(settings, store, live=live)
    store.jobs.record_deployed("a.sh", commit="c" * 40, blob="b" * 40)
    service = RunService(store)
    run = service.queue("a.sh", ManualTrigger(author="admin"))
    service.take(run.id, "w1", lease_s=600)
    store.users.add("viewer", "viewer-password")
    token, _ = store.tokens.create("viewer")
    return SimpleNamespace(app=app, socketio=socketio, store=store, hub=app.extensions["sooner"].hub, run=run.id,
                           token=token)


@pytest.fixture
def live(clocked_store, fake_clock, fast_passwords):
    env = app_on(clocked_store, live=False)
    env.clock = fake_clock
    env.sockets = [env.socketio.test_client(env.app, auth={"token": env.token}) for _ in range(CLIENTS)]
    return env


def spy(obj, name: str, calls: list) -> None:
    """Record the arguments of every call to ``obj.name`` in ``calls`` (and still call it)."""
    original = getattr(obj, name)

    def recording(*args, **kwargs):
        calls.append((args, kwargs))
        return original(*args, **kwargs)
    setattr(obj, name, recording)


def test_a_tick_reads_a_watched_runs_output_once_and_emits_once_however_many_clients_watch(live):
    # given 25 clients following one run
    for socket in live.sockets:
        assert socket.emit("join_run", {"run": live.run, "after_seq": -1}, callback=True)["ok"]
        socket.get_received()
    reads, emits = [], []
    spy(live.store.output, "read", reads)
    spy(live.socketio, "emit", emits)
    for seq in range(5):
        reads.clear()
        emits.clear()
        # when a chunk is stored and the hub ticks
        live.store.output.append(live.run, [(seq, "stdout", f"line {seq}\n", None)])
        live.clock.advance(0.05)
        live.hub.tick()
        # then it read the run's output once and sent one message to the room, not one per client
        assert [args[0] for args, _ in reads] == [live.run]
        outputs = [(args, kwargs) for args, kwargs in emits if args[0] == "output"]
        assert len(outputs) == 1 and outputs[0][1] == {"to": run_room(live.run)}
        # and every client got that chunk, once
        for socket in live.sockets:
            got = [c["seq"] for m in socket.get_received() if m["name"] == "output" for c in m["args"][0]["chunks"]]
            assert got == [seq]


def test_a_throttled_room_wakes_the_loop_when_its_gap_ends_not_a_tick_later(live):
    # given a client that just got a chunk
    socket = live.sockets[0]
    socket.emit("join_run", {"run": live.run, "after_seq": -1}, callback=True)
    live.store.output.append(live.run, [(0, "stdout", "first\n", None)])
    live.hub.tick()
    assert live.hub._pause() == pytest.approx(live.hub.interval_s)  # nothing held back: a whole tick
    # when the next chunk comes 10 ms later, inside the room's 40 ms gap
    live.clock.advance(0.01)
    live.store.output.append(live.run, [(1, "stdout", "second\n", None)])
    live.hub.tick()
    # then the loop waits only for the rest of the gap (30 ms and a millisecond's margin), not 50 ms
    pause = live.hub._pause()
    assert pause == pytest.approx(live.hub.min_gap_s - 0.01 + 0.001)
    # and after that pause the chunk goes out
    live.clock.advance(pause)
    live.hub.tick()
    got = [c["seq"] for m in socket.get_received() if m["name"] == "output" for c in m["args"][0]["chunks"]]
    assert got == [0, 1]


@pytest.fixture
def running_hub(mock_store, fast_passwords):
    env = app_on(mock_store, live=True)
    follows: list[threading.Event] = []
    ended: list[threading.Event] = []
    follow = mock_store.changes.follow

    def recording(kind, on_change, *, stop, **options):
        follows.append(stop)
        try:
            follow(kind, on_change, stop=stop, **options)
        finally:
            ended.append(stop)
    mock_store.changes.follow = recording
    env.follows, env.ended = follows, ended
    yield env
    env.hub.stop_event.set()


def test_the_change_feeds_are_followed_only_while_someone_watches(running_hub):
    env = running_hub
    socket = env.socketio.test_client(env.app, auth={"token": env.token})
    # when a client follows a run, two watchers (output and runs) start
    assert socket.emit("join_run", {"run": env.run, "after_seq": -1}, callback=True)["ok"]
    wait_for(lambda: len(env.follows) == 2, message="two change-feed watchers")
    first = set(env.follows)
    assert not any(stop.is_set() for stop in first)
    # when it leaves, they end
    socket.disconnect()
    wait_for(lambda: set(env.ended) == first, message="the watchers to end")
    # and a new viewer starts new ones
    again = env.socketio.test_client(env.app, auth={"token": env.token})
    assert again.emit("join_run", {"run": env.run, "after_seq": -1}, callback=True)["ok"]
    wait_for(lambda: len(env.follows) == 4, message="two new watchers")
    assert not any(stop.is_set() for stop in env.follows[2:])
    again.disconnect()


class InstantStream:
    """A pymongo change stream of a server that answers every getMore at once (as nx-27017 does)."""

    def __init__(self, events: list, stop: threading.Event) -> None:
        self.events, self.stop, self.asked = events, stop, 0

    def try_next(self):
        self.asked += 1
        if self.asked >= 10:
            self.stop.set()  # a follower that never pauses ends here, and the test says so
        return self.events.pop(0) if self.events else None

    def close(self) -> None:
        pass


def test_a_feed_whose_server_answers_at_once_is_asked_again_after_a_pause_not_in_a_spin(mock_store, monkeypatch):
    # given a server that answers every getMore at once: one insert, then nothing
    event = {"operationType": "insert", "documentKey": {"_id": 1}, "fullDocument": {"run": "r1"}}
    changes = Changes(mock_store)
    stop = CountingStop(limit=3)
    monkeypatch.setattr(changes, "open", lambda kind, **_: ChangeStream(kind, InstantStream([event], stop)))
    got = []
    # when the feed is followed
    changes.follow("run_output", got.append, stop=stop, max_await_ms=500)
    # then the change was delivered at once, and each empty answer was followed by a pause
    assert [change.run_id for change in got] == ["r1"]
    assert stop.waits == [IDLE_POLL_S] * 3


FAN_OUT = """
const { io } = require("socket.io-client");
const [url, token, run, count, last] = process.argv.slice(2);
const seqs = [];
let done = 0;
for (let i = 0; i < +count; i++) {
  const got = [];
  seqs.push(got);
  const socket = io(url, { auth: { token }, transports: ["websocket"], reconnection: false });
  socket.on("connect_error", (err) => { console.error(err.message); process.exit(1); });
  socket.on("connect", () => socket.emit("join_run", { run, after_seq: -1 }, (ack) => {
    if (!ack.ok) { console.error(JSON.stringify(ack)); process.exit(1); }
    console.error(JSON.stringify({ joined: i }));
  }));
  socket.on("output", ({ chunks }) => {
    chunks.forEach((c) => got.push(c.seq));
    if (got.length && got[got.length - 1] >= +last) {
      socket.close();
      if (++done === +count) { console.log(JSON.stringify(seqs)); process.exit(0); }
    }
  });
}
"""


@pytest.fixture(scope="module")
def node(tmp_path_factory) -> Path:
    return node_client(tmp_path_factory)


@pytest.mark.slow
def test_every_client_of_a_real_server_gets_every_chunk_once_in_order_from_one_read_per_tick(
        embedded_store, fast_passwords, node):
    # given the app behind a real HTTP server on the embedded database (change streams), 10 chunks stored
    env = app_on(embedded_store, live=True)
    chunks, clients = 60, 20
    embedded_store.output.append(env.run, [(seq, "stdout", f"line {seq}\n", None) for seq in range(10)])
    ticks, reads = [], []
    spy(env.hub, "tick", ticks)
    spy(embedded_store.output, "read", reads)
    try:
        with served(env.app) as base:
            # when 20 clients join while the rest is appended, one chunk at a time
            script = NodeScript(node, "fan_out.js", FAN_OUT, [base, env.token, env.run, str(clients), str(chunks - 1)],
                                {})
            try:
                wait_for(lambda: script.json_lines() or script.process.poll() is not None, timeout=60,
                         message="a client to join")
                for seq in range(10, chunks):
                    embedded_store.output.append(env.run, [(seq, "stdout", f"line {seq}\n", None)])
                assert script.wait(60) == 0, script.stderr()
            finally:
                script.stop()
    finally:
        env.hub.stop_event.set()
    # then every client got chunks 0..59 exactly once, in order (backlog and broadcasts meet without a gap)
    received = json.loads(script.stdout())
    assert len(received) == clients
    assert all(seqs == list(range(chunks)) for seqs in received), received
    # and the hub read the run's output at most once per tick, not once per client
    assert 0 < len(reads) <= len(ticks)
