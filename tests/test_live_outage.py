"""The live channel rides out a database outage: it says so, retries with backoff, and resumes without a gap.

In-process on mongomock with a fake clock: a store whose every operation
fails (or hangs) stands for the outage, and the hub is stepped by hand
(``run_once`` is one step of its loop, ``check_stall`` one of its watchdog).
End to end: `sooner web` and `sooner worker` as real processes, the embedded
nx-27017 server frozen with SIGSTOP and thawed with SIGCONT while the npm
socket.io-client (the README's example) and a run page in headless Chromium
follow a run: both say the database is unreachable, say when it is back, and
show every line exactly once.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import CountingStop, require_chromium, wait_for
from node.harness import PASSWORD, follow_readme, live_site, node_client, start_run
from sooner.config import load_settings
from sooner.errors import StoreError
from sooner.model import ManualTrigger
from sooner.runs.service import RunService
from sooner.store.embedded import EmbeddedServer
from sooner.webapp import create_app
from sooner.webapp.live import STORE_DOWN
from sooner.webapp.testing import launch_chromium, sign_in


@pytest.fixture
def live(clocked_store, fake_clock):
    settings = load_settings(None, environ={}, overrides={"secret_key": "k" * 40, "mongo_url": clocked_store.url})
    app, socketio = create_app(settings, clocked_store, live=False)
    clocked_store.jobs.record_deployed("a.sh", commit="c" * 40, blob="b" * 40)
    run = RunService(clocked_store).queue("a.sh", ManualTrigger(author="admin"))
    clocked_store.output.append(run.id, [(0, "stdout", "0\n", None), (1, "stdout", "1\n", None)])
    clocked_store.users.add("viewer", "viewer-password")
    token, _ = clocked_store.tokens.create("viewer")
    hub = app.extensions["sooner"].hub
    hub.min_gap_s = 0  # ticks by hand, back to back
    return SimpleNamespace(app=app, socketio=socketio, store=clocked_store, hub=hub, clock=fake_clock, run=run.id,
                           token=token)


def client(live):
    socket = live.socketio.test_client(live.app, auth={"token": live.token})
    assert socket.is_connected()
    return socket


def events(socket, name: str) -> list:
    return [message["args"][0] for message in socket.get_received() if message["name"] == name]


def seqs(received: list[dict]) -> list[int]:
    return [chunk["seq"] for message in received if message["name"] == "output" for chunk in message["args"][0]["chunks"]]


@contextmanager
def unreachable(store):
    """Every database operation of ``store`` fails as in an outage (the store's retrier gave up)."""
    def fail(operation):
        raise StoreError("cannot reach the database at mongodb://127.0.0.1:1 after 4 attempts: timed out")
    store.retry, kept = fail, store.retry
    try:
        yield
    finally:
        store.retry = kept


def test_an_outage_is_announced_once_retried_with_backoff_and_the_output_resumes_exactly(live):
    # given a client following a run with two lines
    follower = client(live)
    assert follower.emit("join_run", {"run": live.run, "after_seq": -1}, callback=True)["ok"]
    assert seqs(follower.get_received()) == [0, 1]
    with unreachable(live.store):
        # when the database stops answering
        pauses = [live.hub.run_once() for _ in range(8)]
        # then the client is told once, and the hub backs off instead of spinning
        received = follower.get_received()
        assert [m["args"][0] for m in received if m["name"] == "store_status"] == [{"ok": False, "message": STORE_DOWN}]
        assert pauses == [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0]
        # and a client joining meanwhile is told to join again once the database is back
        refused = follower.emit("join_run", {"run": live.run, "after_seq": 1}, callback=True)
        assert refused["ok"] is False and refused["code"] == "store_unavailable" and refused["retry"] is True
        assert "join again after store_status {ok: true}" in refused["error"]
    # when lines were written during the outage and the database answers again
    live.store.output.append(live.run, [(2, "stdout", "2\n", None), (3, "stdout", "3\n", None)])
    assert live.hub.run_once() == 0.0
    # then the client hears that it is back and gets the rest, from where it stopped, once
    received = follower.get_received()
    assert [m["args"][0]["ok"] for m in received if m["name"] == "store_status"] == [True]
    assert seqs(received) == [2, 3]
    live.hub.run_once()
    assert seqs(follower.get_received()) == []
    assert live.hub.run_once() == 0.0 and live.hub._backoff == live.hub.interval_s


def test_a_hole_in_the_output_seen_before_an_outage_is_waited_for_again_after_it(live):
    # given a follower, and a chunk stored after a hole (seq 3 before seq 2 is visible)
    follower = client(live)
    follower.emit("join_run", {"run": live.run, "after_seq": -1}, callback=True)
    follower.get_received()
    live.store.output.append(live.run, [(3, "stdout", "3\n", None)])
    live.hub.tick()
    assert seqs(follower.get_received()) == []  # waiting up to gap_wait_s for seq 2
    # when the database is unreachable for longer than that wait
    with unreachable(live.store):
        live.hub.run_once()
    live.clock.advance(live.hub.gap_wait_s * 3)
    # then the first tick after it waits afresh instead of skipping seq 2 at once
    live.hub.run_once()
    assert seqs(follower.get_received()) == []
    live.store.output.append(live.run, [(2, "stdout", "2\n", None)])
    live.hub.run_once()
    assert seqs(follower.get_received()) == [2, 3]


def test_a_tick_stuck_in_the_database_is_announced_after_stall_s_and_cleared_when_it_returns(live):
    follower = client(live)
    follower.emit("join_run", {"run": live.run, "after_seq": -1}, callback=True)
    follower.get_received()
    entered, release = threading.Event(), threading.Event()
    kept = live.store.retry

    def hang(operation):
        entered.set()
        assert release.wait(30), "the test never released the database"
        return kept(operation)
    live.store.retry = hang
    ticking = threading.Thread(target=live.hub.tick)
    ticking.start()
    try:
        assert entered.wait(30)
        # a tick waiting for an answer: nothing yet, then unreachable once stall_s has passed
        assert not live.hub.check_stall()
        live.clock.advance(live.hub.stall_s)
        assert live.hub.check_stall()
        assert [s["ok"] for s in events(follower, "store_status")] == [False]
        live.store.retry = kept
    finally:
        release.set()
        ticking.join(30)
    # the stuck tick came back: that is the database answering
    assert [s["ok"] for s in events(follower, "store_status")] == [True]


def test_connecting_while_the_database_is_unreachable_is_refused_for_now(live):
    live.hub.store_failed("test")
    assert not live.socketio.test_client(live.app, auth={"token": live.token}).is_connected()
    live.hub.tick()  # it answers again
    assert client(live).is_connected()


# -- end to end: the embedded server frozen and thawed -------------------------------------------

@pytest.fixture(scope="module")
def served(tmp_path_factory):
    with live_site(tmp_path_factory.mktemp("live-outage")) as site:
        yield site


@pytest.fixture(scope="session")
def node(tmp_path_factory) -> Path:
    return node_client(tmp_path_factory)


@contextmanager
def frozen(site):
    """SIGSTOP the site's embedded server; SIGCONT on leaving, whatever happened."""
    pid = EmbeddedServer(site.settings.state_dir).status().pid
    assert pid
    os.kill(pid, signal.SIGSTOP)
    try:
        yield pid
    finally:
        os.kill(pid, signal.SIGCONT)


STORE_EVENTS = '\nsocket.on("store_status", (status) => console.error(JSON.stringify({ store: status })));\n'


def store_events(script) -> list[bool]:
    return [line["store"]["ok"] for line in script.json_lines() if "store" in line]


@pytest.mark.slow
def test_the_readme_client_says_when_the_database_is_frozen_and_back_and_misses_no_line(served, node, tmp_path):
    # given the README's client following a run that waits after line 20
    token, _ = served.store.tokens.create("viewer", "outage")
    gate = tmp_path / "gate"
    run_id = start_run(served, {"lines": 40, "gate": str(gate), "at": 20})
    follower = follow_readme(node, served, run_id, token, STORE_EVENTS)
    try:
        wait_for(lambda: "line 20 of 40" in follower.stdout(), timeout=60, message="the first 20 lines")
        # when the database freezes
        with frozen(served):
            # then the client hears it is unreachable (while its connection stays open)
            wait_for(lambda: store_events(follower) == [False], timeout=30, message="store_status ok: false")
        # and that it is back once it thaws
        wait_for(lambda: store_events(follower) == [False, True], timeout=60, message="store_status ok: true")
        gate.touch()
        assert follower.wait(60) == 0, follower.stderr()
    finally:
        follower.stop()
    # and it has every line once, in order, and the last progress
    printed = [line for line in follower.stdout().splitlines() if not line.startswith("sooner: ")]
    assert printed == [f"line {i} of 40" for i in range(1, 41)]
    assert [line for line in follower.stderr().splitlines() if line.startswith("progress ")][-1] == "progress 40/40"
    assert STORE_DOWN in follower.stderr()  # what the example prints for ok: false


@pytest.fixture(scope="module")
def browser_page(served):
    require_chromium()
    from playwright.sync_api import sync_playwright

    playwright = sync_playwright().start()
    browser = launch_chromium(playwright)
    page = browser.new_context().new_page()
    sign_in(page, served.base, "viewer", PASSWORD)
    yield page
    browser.close()
    playwright.stop()


@pytest.mark.browser
@pytest.mark.slow
def test_the_run_page_shows_a_banner_while_the_database_is_frozen_and_keeps_every_line(served, browser_page,
                                                                                        tmp_path):
    page = browser_page
    gate = tmp_path / "gate"
    run_id = start_run(served, {"lines": 40, "gate": str(gate), "at": 20})
    page.goto(f"{served.base}/runs/{run_id}")
    page.wait_for_selector("#output .c:has-text('line 20 of 40')", timeout=60_000)
    with frozen(served):
        page.wait_for_selector("#store-banner:not([hidden])", timeout=30_000)
        assert "unreachable" in (page.text_content("#store-banner") or "")
    page.wait_for_selector("#store-banner[hidden]", state="attached", timeout=60_000)
    gate.touch()
    page.wait_for_selector("#run-status[data-status=succeeded]", timeout=60_000)
    page.wait_for_selector("#output .c:has-text('line 40 of 40')", timeout=60_000)
    text = page.text_content("#output") or ""
    assert [text.count(f"line {i} of 40\n") for i in range(1, 41)] == [1] * 40
    assert json.loads(page.evaluate("JSON.stringify(document.querySelector('#run-progress progress').value)")) == 100


# -- the change feed after an outage ------------------------------------------------------------------

class BrokenStream:
    """What the driver's change stream does when the server went away."""

    def try_next(self):
        raise OSError("connection reset by peer")

    def close(self) -> None:
        pass


def test_a_change_feed_that_broke_is_reopened_soon_with_backoff_one_that_never_opened_rarely(mock_store, monkeypatch):
    from sooner.store.changes import ChangeStream

    opened = iter([ChangeStream("runs", BrokenStream())])
    monkeypatch.setattr(mock_store.changes, "open", lambda kind, max_await_ms=500: next(opened, None))
    states: list[bool] = []
    stop = CountingStop(6)
    mock_store.changes.follow("runs", lambda change: None, stop=stop, on_state=states.append)
    assert states[:2] == [True, False] and set(states[1:]) == {False}
    assert stop.waits == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0]
    # where no stream ever opened (mongomock, a standalone MongoDB) it asks every 30 s
    monkeypatch.setattr(mock_store.changes, "open", lambda kind, max_await_ms=500: None)
    stop = CountingStop(2)
    mock_store.changes.follow("runs", lambda change: None, stop=stop)
    assert stop.waits == [30.0, 30.0]
