"""Socket.IO with API tokens: the auth payload or an Authorization header, the REST API's throttle, clear refusals.

In-process through Flask-SocketIO's test client on mongomock (a fake clock
drives the throttle), and end to end: `sooner web` and `sooner worker` as real
processes on a site made by `sooner init`, a script pushed with real git, and
the README's "Live protocol" example run verbatim under Node with the npm
socket.io-client (installed from tests/node's lock file into a temporary
folder, so the checkout stays clean).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from argon2 import PasswordHasher
from flask_socketio import SocketIOTestClient
from socketio import packet

from conftest import signed_in, wait_for
from node.harness import NodeScript, follow_readme, live_site, node_client, start_run
from sooner.clock import FakeClock, utcnow
from sooner.config import load_settings
from sooner.model import ManualTrigger
from sooner.runs.service import RunService
from sooner.webapp import create_app

PASSWORD = "live-bearer-password"
BAD_TOKEN = "sooner_0123456789abcdef_" + "x" * 43
ATTACKER, USER = "203.0.113.7", "198.51.100.20"


@pytest.fixture
def web(make_mock_store, monkeypatch):
    monkeypatch.setattr("sooner.store.users._passwords", PasswordHasher(time_cost=1, memory_cost=64, parallelism=1))
    clock = FakeClock(utcnow())  # not a fixed date: sessions' expiry is a TTL index, honoured on real time
    clocked_store = make_mock_store(clock=clock)
    settings = load_settings(None, environ={}, overrides={"secret_key": "k" * 40, "mongo_url": clocked_store.url})
    app, socketio = create_app(settings, clocked_store, live=False)
    app.config["TESTING"] = True
    clocked_store.users.add("admin", PASSWORD, admin=True)
    clocked_store.users.add("viewer", PASSWORD)
    clocked_store.jobs.record_deployed("a.sh", commit="c" * 40, blob="b" * 40)
    run = RunService(clocked_store).queue("a.sh", ManualTrigger(author="admin"))
    clocked_store.output.append(run.id, [(0, "stdout", "hello\n", None)])
    return SimpleNamespace(app=app, socketio=socketio, store=clocked_store, run=run.id, clock=clock,
                           hub=app.extensions["sooner"].hub)


class Client(SocketIOTestClient):
    """Flask-SocketIO's test client, keeping what a refused connect said (``refusal``: message and data)."""

    refusal: dict | None = None

    def connect(self, *args, **kwargs) -> None:
        send = self.socketio.server._send_packet

        def record(eio_sid, pkt) -> None:
            if eio_sid == self.eio_sid and pkt.packet_type == packet.CONNECT_ERROR:
                self.refusal = pkt.data
            send(eio_sid, pkt)
        self.socketio.server._send_packet = record
        try:
            super().connect(*args, **kwargs)
        finally:
            self.socketio.server._send_packet = send


def connect(web, address: str = USER, **options) -> Client:
    """A Socket.IO connection from ``address``."""
    http = web.app.test_client()
    http.environ_base["REMOTE_ADDR"] = address
    return Client(web.app, web.socketio, flask_test_client=http, **options)


def refusal(web, address: str = USER, **options) -> dict:
    """The connect_error a connection attempt got: {message, data: {code, …}}."""
    client = connect(web, address, **options)
    assert not client.is_connected() and client.refusal is not None
    return client.refusal


def test_a_token_in_the_auth_payload_or_the_authorization_header_connects_and_follows_a_run(web):
    token, _ = web.store.tokens.create("viewer")  # a viewer reads, and following is reading
    by_payload = connect(web, auth={"token": token})
    by_header = connect(web, headers={"Authorization": f"Bearer {token}"})
    for socket in (by_payload, by_header):
        assert socket.is_connected()
        ack = socket.emit("join_run", {"run": web.run, "after_seq": -1}, callback=True)
        assert ack["ok"] and ack["last_seq"] == 0
        assert [m["args"][0]["chunks"] for m in socket.get_received() if m["name"] == "output"] == [
            [{"seq": 0, "stream": "stdout", "text": "hello\n"}]]


def test_no_credentials_an_invalid_token_or_a_malformed_payload_are_refused_saying_what_to_send(web):
    assert not connect(web).is_connected()
    assert not connect(web, auth={"token": BAD_TOKEN}).is_connected()
    missing = refusal(web)
    assert missing["data"]["code"] == "unauthorized" and "{token: '<API token>'}" in missing["message"]
    invalid = refusal(web, headers={"Authorization": f"Bearer {BAD_TOKEN}"})
    assert invalid["data"]["code"] == "unauthorized" and "invalid API token" in invalid["message"]
    for payload in ({"token": 42}, "a string", ["token"]):
        malformed = refusal(web, auth=payload)
        assert malformed["data"]["code"] == "bad_request" and "{token: '<API token>'}" in malformed["message"]


def test_a_revoked_token_is_refused_and_an_open_connection_with_it_can_join_no_more(web):
    token, document = web.store.tokens.create("admin")
    socket = connect(web, auth={"token": token})
    assert socket.emit("join_run", {"run": web.run, "after_seq": -1}, callback=True)["ok"]
    web.store.tokens.revoke(document["_id"])
    again = socket.emit("join_run", {"run": web.run, "after_seq": -1}, callback=True)
    assert again["ok"] is False and again["code"] == "unauthorized" and "revoked" in again["error"]
    assert web.hub.rooms == {}  # what it followed stopped too
    assert refusal(web, auth={"token": token})["data"]["code"] == "unauthorized"


def test_token_guesses_on_the_socket_are_throttled_like_the_rest_apis(web):
    token, _ = web.store.tokens.create("admin")
    # given ten wrong guesses from one address
    for _ in range(10):
        assert refusal(web, ATTACKER, auth={"token": BAD_TOKEN})["data"]["code"] == "unauthorized"
    # then that address waits, even with the right token, on the socket and on the REST API alike
    throttled = refusal(web, ATTACKER, auth={"token": token})
    assert throttled["data"]["code"] == "throttled" and throttled["data"]["retry_after_s"] > 0
    assert "too many invalid API tokens" in throttled["message"]
    assert web.app.test_client().get("/api/jobs", headers={"Authorization": f"Bearer {token}"},
                                     environ_base={"REMOTE_ADDR": ATTACKER}).status_code == 429
    # while another address is not slowed down, and the wait ends on time
    assert connect(web, USER, auth={"token": token}).is_connected()
    web.clock.advance(throttled["data"]["retry_after_s"])
    assert connect(web, ATTACKER, auth={"token": token}).is_connected()


def test_the_signed_in_session_cookie_still_connects_the_web_ui(web):
    client = signed_in(web.app, "viewer", PASSWORD)
    assert Client(web.app, web.socketio, flask_test_client=client).is_connected()


# -- end to end: real processes, the npm client ---------------------------------------------------

@pytest.fixture(scope="session")
def node(tmp_path_factory) -> Path:
    return node_client(tmp_path_factory)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    with live_site(tmp_path_factory.mktemp("live-site")) as site:
        yield site


@pytest.mark.slow
def test_the_readme_example_follows_a_run_with_a_viewers_token(served, node, tmp_path):
    # given a viewer's token and a run that prints 40 lines with progress, paused after line 20
    token, _ = served.store.tokens.create("viewer", "readme")
    gate = tmp_path / "gate"
    run_id = start_run(served, {"lines": 40, "gate": str(gate), "at": 20})
    # when the README's example follows it
    follower = follow_readme(node, served, run_id, token)
    try:
        wait_for(lambda: "line 20 of 40" in follower.stdout(), timeout=60, message="the first 20 lines")
        gate.touch()  # the rest arrives live
        assert follower.wait(60) == 0, follower.stderr()
    finally:
        follower.stop()
    # then it printed every line once, in order, between Sooner's own notes, and the progress up to the end
    printed = follower.stdout().splitlines()
    assert [line for line in printed if not line.startswith("sooner: ")] == [f"line {i} of 40" for i in range(1, 41)]
    assert printed[0].startswith(f"sooner: run {run_id} of live_lines.sh on worker w1")
    assert printed[-1].startswith("sooner: ") and "exit" in printed[-1]
    progress = [line for line in follower.stderr().splitlines() if line.startswith("progress ")]
    assert progress[-1] == "progress 40/40"
    assert progress == sorted(progress, key=lambda line: int(line.split()[1].split("/")[0]))


REFUSALS = """
const { io } = require("socket.io-client");
const attempts = JSON.parse(process.argv[2]);
(async () => {
  for (const options of attempts) {
    const result = await new Promise((resolve) => {
      const socket = io(process.env.SOONER_URL, { ...options, reconnection: false });
      socket.on("connect", () => { socket.close(); resolve({ connected: true }); });
      socket.on("connect_error", (err) => { socket.close(); resolve({ message: err.message, data: err.data }); });
    });
    console.error(JSON.stringify(result));
  }
})();
"""


@pytest.mark.slow
def test_no_token_or_a_revoked_one_gets_a_clear_connect_error_in_the_npm_client(served, node):
    token, document = served.store.tokens.create("viewer", "soon revoked")
    served.store.tokens.revoke(document["_id"])
    valid, _ = served.store.tokens.create("viewer", "valid")
    attempts = [{}, {"auth": {"token": token}}, {"auth": {"token": 7}},
                {"extraHeaders": {"Authorization": f"Bearer {valid}"}}]
    script = NodeScript(node, "refusals.js", REFUSALS, [json.dumps(attempts)], {"SOONER_URL": served.base})
    assert script.wait(60) == 0, script.stderr()
    none, revoked, malformed, by_header = script.json_lines()
    assert none["data"]["code"] == "unauthorized" and "auth payload {token: '<API token>'}" in none["message"]
    assert revoked["data"]["code"] == "unauthorized" and "invalid API token" in revoked["message"]
    assert "revoked" in revoked["message"]
    assert malformed["data"]["code"] == "bad_request"
    assert by_header == {"connected": True}
