"""Values scripts send are checked to what the store can hold; a bad or unrecordable call never ends the run.

Real scripts in real subprocesses, run by a real worker on the embedded
server (stderr lines, raw JSON-RPC on the socket, and ``sooner.api``). Store
failures are injected on the one repository method that records the call
(``runs.set_progress``, ``events.record``), so the rest of the run (output,
its end) is stored as usual.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import wait_for
from sooner.config import Settings
from sooner.errors import ProtocolError, StoreError
from sooner.model import FINISHED, ManualTrigger, Progress, Run, RunStatus
from sooner.runs.service import RunService
from sooner.store import Store
from sooner.worker.calls import (
    EMIT_BURST,
    EMIT_PER_S,
    PROGRESS_RETRY_FIRST_S,
    PROGRESS_RETRY_MAX_S,
    CallHandler,
    CallNotRecorded,
    TokenBucket,
    is_store_failure,
)
from sooner.worker.loop import Worker
from sooner.worker.protocol import Call, parse_stderr_line
from sooner.worker.testing import deploy_files

PY = f"#!{sys.executable}\n"
BIG = 100000000000000000000  # 10**20: beyond a 64-bit integer, what the script sends


@pytest.fixture
def store(embedded_store: Store) -> Store:
    return embedded_store


@pytest.fixture
def settings(store: Store) -> Settings:
    return Settings(mongo_url=store.url, database=store.database_name, heartbeat_s=0.2, lease_s=5.0,
                    cancel_grace_s=1.0, shutdown_grace_s=2.0, output_flush_ms=50)


@pytest.fixture
def worker(store: Store, settings: Settings, start_worker) -> Worker:
    """A registered worker whose loop runs on a thread until the test ends."""
    return start_worker(store, settings, "values", 2)


def run_job(store: Store, files: dict[str, str], job: str) -> Run:
    """Deploy ``files``, start ``job`` and wait (with a deadline) until its run has finished."""
    deploy_files(store, files)
    queued = RunService(store).queue(job, ManualTrigger())
    assert queued is not None
    return wait_for(lambda: (r := store.runs.get(queued.id)).status in FINISHED and r, 30,  # type: ignore[return-value]
                    message=f"run {queued.id} to finish")


def text_of(store: Store, run_id: str, stream: str) -> str:
    return "".join(chunk["text"] for chunk in store.output.read(run_id) if chunk["stream"] == stream)


def test_progress_beyond_64_bits_on_stderr_is_a_note_and_the_run_succeeds(store: Store, worker: Worker) -> None:
    # given the script, verbatim
    script = "#!/bin/bash\necho '>>> sooner.progress(100000000000000000000, 10)' >&2; echo ok; exit 0\n"

    # when it runs
    run = run_job(store, {"big.sh": script}, "big.sh")

    # then it succeeded; the call stayed in the output, with a note naming the rule
    system = text_of(store, run.id, "system")
    assert run.status == RunStatus.SUCCEEDED, system
    assert "worker error" not in system
    assert text_of(store, run.id, "stdout") == "ok\n"
    assert text_of(store, run.id, "stderr") == f">>> sooner.progress({BIG}, 10)\n"
    assert "sooner: ignored malformed call: progress: current must be a whole number within 64 bits" in system
    assert run.progress is None


def test_a_bad_progress_right_after_another_call_keeps_the_script_running(store: Store, worker: Worker) -> None:
    # given a script whose second call comes within the progress throttle of the first, then works on
    # (for several throttle periods, so a held value is written while it runs), printing more
    script = ("#!/bin/bash\necho '>>> sooner.progress(1, 10)' >&2\n"
              f"echo '>>> sooner.progress({BIG}, 10)' >&2\n"
              "echo before\nsleep 0.3\nfor i in 1 2 3; do echo \"line $i\"; done\n"
              "echo '>>> sooner.progress(3, 10)' >&2\necho after\nexit 0\n")

    # when it runs
    run = run_job(store, {"throttled.sh": script}, "throttled.sh")

    # then it was not killed: every line is there and the good progress values count
    system = text_of(store, run.id, "system")
    assert run.status == RunStatus.SUCCEEDED and run.exit_code == 0, system
    assert "SIGKILL" not in system and "worker error" not in system
    assert text_of(store, run.id, "stdout") == "before\nline 1\nline 2\nline 3\nafter\n"
    assert run.progress == Progress(3, 10)


def test_progress_beyond_64_bits_over_the_socket_is_invalid_params(store: Store, worker: Worker) -> None:
    # given a script that sends the call as a raw JSON-RPC request and prints the reply
    script = PY + (
        "import json, socket, sys\n"
        "sock = socket.socket(socket.AF_UNIX)\nsock.connect(sys.argv[1])\n"
        f"sock.sendall(b'{{\"jsonrpc\": \"2.0\", \"id\": 1, \"method\": \"progress\", \"params\": [{BIG}, 10]}}\\n')\n"
        "print(sock.makefile('rb').readline().decode().strip())\n"
    )

    # when it runs
    run = run_job(store, {"raw.py": script}, "raw.py")

    # then the request got invalid params naming the rule, and the run succeeded
    assert run.status == RunStatus.SUCCEEDED, text_of(store, run.id, "system")
    reply = json.loads(text_of(store, run.id, "stdout"))
    assert reply["id"] == 1 and reply["error"]["code"] == -32602
    assert "current must be a whole number within 64 bits" in reply["error"]["message"]
    assert run.progress is None


def test_sooner_api_progress_beyond_64_bits_is_refused_in_the_script(store: Store, worker: Worker) -> None:
    # given a Python script calling sooner.api.progress(10**20, 10), then a good value
    script = PY + ("from sooner import api\n"
                   "try:\n    api.progress(10**20, 10)\nexcept ValueError as exc:\n    print('refused:', exc)\n"
                   "api.progress(4, 10)\nprint('done')\n")

    # when it runs
    run = run_job(store, {"api_big.py": script}, "api_big.py")

    # then the script was told, went on, and the run succeeded with the good value
    out = text_of(store, run.id, "stdout")
    assert run.status == RunStatus.SUCCEEDED, text_of(store, run.id, "system")
    assert out.startswith("refused: progress: current must be a whole number within 64 bits") and out.endswith("done\n")
    assert run.progress == Progress(4, 10)


def test_emit_data_the_store_cannot_hold_is_a_note_on_stderr_and_invalid_params_on_the_socket(
    store: Store, worker: Worker
) -> None:
    # given a script emitting data with a key MongoDB refuses, a lone surrogate and a huge int, both ways
    script = PY + (
        "import sys\nfrom sooner import api\nfrom sooner.api_client import RpcCallError\n"
        "print('>>> sooner.emit(\"bad\", {\"$where\": 1})', file=sys.stderr, flush=True)\n"
        "print('>>> sooner.emit(\"bad\", {\"s\": \"\\\\ud800\"})', file=sys.stderr, flush=True)\n"
        f"print('>>> sooner.emit(\"bad\", {{\"n\": [1, 2, {BIG}]}})', file=sys.stderr, flush=True)\n"
        "try:\n    api.emit('bad', {'a': {'b.c': 1}})\nexcept RpcCallError as exc:\n    print(exc.code, exc.message)\n"
        "api.emit('good', {'n': 2**63 - 1})\nprint('done')\n"
    )

    # when it runs
    run = run_job(store, {"emits.py": script}, "emits.py")

    # then only the good event is stored; each bad one was explained, naming the path
    system, out = text_of(store, run.id, "system"), text_of(store, run.id, "stdout")
    assert run.status == RunStatus.SUCCEEDED, system
    assert 'emit: data key "$where" must not start with "$"' in system
    assert 'emit: data["s"] is not valid Unicode (a lone surrogate)' in system
    assert 'emit: data["n"][2] must be a whole number within 64 bits' in system
    assert out.startswith('-32602 Invalid params: emit: data["a"] key "b.c" must not contain "."')
    assert out.endswith("done\n")
    assert store.events.list(name="bad") == []
    assert [event["data"] for event in store.events.list(name="good")] == [{"n": 2**63 - 1}]


def test_sooner_api_outside_a_socket_checks_emit_data_and_writes_lines_that_parse_back(tmp_path: Path) -> None:
    # given a script run by hand (no socket): sooner.api falls back to stderr lines
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOONER_")}
    code = ("from sooner import api\n"
            "try:\n    api.emit('e', {'$set': 1})\nexcept ValueError as exc:\n    print('refused:', exc)\n"
            "api.emit('e', {'smile': '\\U0001f600', 'n': 2**63 - 1})\n")

    # when it emits data the store cannot hold, then data with a character beyond the BMP
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
                            timeout=30)

    # then the first was refused in the script, and the second's line (JSON escapes) parses back to the same data
    assert result.returncode == 0, result.stderr
    assert result.stdout == 'refused: emit: data key "$set" must not start with "$"\n'
    assert "\\ud83d\\ude00" in result.stderr
    assert parse_stderr_line(result.stderr) == Call("emit", {"event": "e", "data": {"smile": "\U0001f600",
                                                                                     "n": 2**63 - 1}})


def failing(times: int, original: Callable[..., Any]) -> Callable[..., Any]:
    """``original``, except that its first ``times`` calls raise StoreError as an unreachable database does."""
    left = [times]

    def call(*args: Any, **kwargs: Any) -> Any:
        if left[0] > 0:
            left[0] -= 1
            raise StoreError("cannot reach the database (injected)")
        return original(*args, **kwargs)

    return call


def test_progress_the_store_cannot_write_is_retried_and_never_ends_the_run(
    store: Store, worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a store whose first two progress writes fail
    monkeypatch.setattr(store.runs, "set_progress", failing(2, store.runs.set_progress))
    # and a script that reports progress, keeps printing until it sees its value stored (the retry,
    # while it runs), then reports its last value and exits
    script = PY + (
        "import os, sys, time\nfrom sooner.store import Store\n"
        "runs = Store(os.environ['SOONER_MONGO_URL'], os.environ['SOONER_DATABASE']).runs\n"
        "print('>>> sooner.progress(1, 6)', file=sys.stderr, flush=True)\n"
        "print('>>> sooner.progress(2, 6)', file=sys.stderr, flush=True)\n"
        "deadline = time.monotonic() + 20\n"
        "def stored():\n    return runs.get(os.environ['SOONER_RUN_ID']).progress\n"
        "while stored() is None and time.monotonic() < deadline:\n"
        "    print('waiting', flush=True)\n    time.sleep(0.02)\n"
        "print('stored:', stored(), flush=True)\n"
        "print('>>> sooner.progress(6, 6)', file=sys.stderr, flush=True)\nprint('done')\n"
    )

    # when it runs
    run = run_job(store, {"flaky.py": script}, "flaky.py")

    # then the first write's failure was noted, the held value was retried while the script ran,
    # and the run succeeded with all its output and its last value
    system, out = text_of(store, run.id, "system"), text_of(store, run.id, "stdout")
    assert run.status == RunStatus.SUCCEEDED, system
    assert "worker error" not in system
    assert "sooner: call failed: CallNotRecorded: progress 1/6 was not recorded: cannot reach the database" in system
    assert "stored: Progress(current=2, max=6)" in out and out.endswith("done\n")
    assert run.progress == Progress(6, 6)


def test_an_emit_the_store_cannot_record_is_reported_and_the_run_goes_on(
    store: Store, worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a store whose event writes fail twice
    monkeypatch.setattr(store.events, "record", failing(2, store.events.record))
    script = PY + (
        "import sys\nfrom sooner import api\nfrom sooner.api_client import RpcCallError\n"
        "print('>>> sooner.emit(\"lost\")', file=sys.stderr, flush=True)\n"
        "try:\n    api.emit('lost-too')\nexcept RpcCallError as exc:\n    print(exc.code, exc.message)\n"
        "print('>>> sooner.emit(\"kept\")', file=sys.stderr, flush=True)\nprint('done')\n"
    )

    # when the script emits three times
    run = run_job(store, {"emit_fail.py": script}, "emit_fail.py")

    # then both channels said the call was not recorded, the third was, and the run succeeded
    system, out = text_of(store, run.id, "system"), text_of(store, run.id, "stdout")
    assert run.status == RunStatus.SUCCEEDED, system
    assert "sooner: call failed: CallNotRecorded: emit 'lost' was not recorded: cannot reach the database" in system
    assert out.startswith("-32603 Internal error: emit 'lost-too' was not recorded: cannot reach the database")
    assert out.endswith("done\n")
    assert text_of(store, run.id, "stderr") == '>>> sooner.emit("lost")\n'
    assert [event["name"] for event in store.events.list() if not event["name"].startswith("job:")] == ["kept"]


def test_an_emit_flood_is_limited_and_the_run_goes_on(store: Store, worker: Worker) -> None:
    # given a script that emits 300 events as fast as it can
    flood = 300
    script = (f"#!/bin/bash\nfor i in $(seq 1 {flood}); do echo \">>> sooner.emit(\\\"flood\\\", $i)\" >&2; done\n"
              "echo done\nexit 0\n")

    # when it runs
    run = run_job(store, {"flood.sh": script}, "flood.sh")

    # then it succeeded; the burst and what the rate refilled were stored, the rest are notes
    system = text_of(store, run.id, "system")
    assert run.status == RunStatus.SUCCEEDED, system
    assert run.started_at and run.finished_at
    elapsed = (run.finished_at - run.started_at).total_seconds()
    stored = len(store.events.list(name="flood", limit=flood))
    refused = system.count("emit: over the rate limit")
    assert EMIT_BURST <= stored <= EMIT_BURST + EMIT_PER_S * elapsed + 1
    assert stored + refused == flood
    assert text_of(store, run.id, "stdout") == "done\n"


# -- the call handler on its own ------------------------------------------------------------------------


class FakeMonotonic:
    """A monotonic clock in seconds that moves only when told."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def handler(mock_store: Store) -> CallHandler:
    # The run need not exist: set_progress is replaced in these tests.
    return CallHandler(RunService(mock_store, Settings()), Run(id="r-calls", job="calls.sh"), throttle_s=0.05)


def test_the_emit_bucket_allows_a_burst_then_the_rate() -> None:
    clock = FakeMonotonic()
    bucket = TokenBucket(EMIT_BURST, EMIT_PER_S, now=clock)

    burst = [bucket.take() for _ in range(EMIT_BURST + 1)]
    clock.t += 1.5 / EMIT_PER_S
    refilled = [bucket.take(), bucket.take()]
    clock.t += 3600
    after_an_hour = sum(bucket.take() for _ in range(EMIT_BURST * 2))

    assert burst == [True] * EMIT_BURST + [False]
    assert refilled == [True, False]
    assert after_an_hour == EMIT_BURST  # idle time refills the burst, no more


def test_an_emit_over_the_limit_is_a_protocol_error_and_stores_nothing(mock_store: Store) -> None:
    clock = FakeMonotonic()
    handler = CallHandler(RunService(mock_store, Settings()), Run(id="r-flood", job="flood.sh"),
                          emits=TokenBucket(2, 1.0, now=clock))

    handler.emit("a")
    handler.emit("b")
    with pytest.raises(ProtocolError, match=r"emit: over the rate limit \(2 at once, then 1 per second\): "
                                            r"event 'c' was not stored"):
        handler.emit("c")
    clock.t += 1.0
    handler.emit("d")

    assert sorted(event["name"] for event in mock_store.events.list()) == ["a", "b", "d"]


def test_a_failing_progress_write_is_retried_later_and_later_without_raising(
    handler: CallHandler, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a store that cannot be reached
    monkeypatch.setattr(handler.store.runs, "set_progress", failing(10, handler.store.runs.set_progress))

    def waits_after(attempt: Callable[[], None]) -> tuple[float, float]:
        """How long after the attempt the next write is due: (at least, at most)."""
        start = time.monotonic()
        attempt()
        end, due = time.monotonic(), handler.progress_due()
        assert due is not None
        return due - end, due - start

    # when a value is reported, then flushed twice by the run's loop
    with pytest.raises(CallNotRecorded, match="progress 1/2 was not recorded: cannot reach the database"):
        handler.progress(1, 2)
    first = handler.progress_due()
    second = waits_after(lambda: handler.flush_progress(force=True))
    third = waits_after(lambda: handler.flush_progress(force=True))

    # then the value stays pending, each try waiting twice as long as the one before
    assert first is not None
    assert second[0] <= PROGRESS_RETRY_FIRST_S * 2 <= second[1]
    assert third[0] <= PROGRESS_RETRY_FIRST_S * 4 <= third[1]


def test_the_progress_backoff_stops_growing_and_resets_once_a_write_succeeds(
    handler: CallHandler, monkeypatch: pytest.MonkeyPatch
) -> None:
    written: list[tuple[float, float]] = []
    monkeypatch.setattr(handler.store.runs, "set_progress",
                        failing(12, lambda run_id, current, maximum: written.append((current, maximum))))

    with pytest.raises(CallNotRecorded):
        handler.progress(1, 2)
    for _ in range(11):
        handler.flush_progress(force=True)
    attempt = time.monotonic()
    handler.flush_progress(force=True)  # the 13th write succeeds

    assert written == [(1, 2)] and handler.progress_due() is None
    handler.progress(2, 2)  # within the throttle of the last write: held, due a throttle later, not a backoff
    due = handler.progress_due()
    assert due is not None and due - attempt < PROGRESS_RETRY_FIRST_S
    assert PROGRESS_RETRY_FIRST_S * 2**11 > PROGRESS_RETRY_MAX_S  # so the cap was reached above


def test_a_progress_write_that_fails_for_another_reason_is_dropped_not_raised_into_the_run(
    handler: CallHandler, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # given a write that fails with what no retry would fix (here what PyMongo raised for 10**20)
    def refuse(run_id: str, current: float, maximum: float) -> None:
        raise OverflowError("MongoDB can only handle up to 8-byte ints")

    monkeypatch.setattr(handler.store.runs, "set_progress", refuse)

    # when a value is reported and the run's loop flushes
    handler.progress(1, 2)
    handler.flush_progress(force=True)

    # then nothing was raised, the failure was logged with its traceback, and nothing is left to retry
    assert "progress 1/2 could not be written; dropped" in caplog.text
    assert handler.progress_due() is None


def test_store_failures_are_store_errors_and_what_the_driver_raises() -> None:
    from bson.errors import InvalidDocument
    from pymongo.errors import InvalidOperation, WriteError

    assert is_store_failure(StoreError("down")) and is_store_failure(CallNotRecorded("emit 'e'", StoreError("x")))
    assert is_store_failure(WriteError("refused")) and is_store_failure(InvalidOperation("client closed"))
    assert is_store_failure(InvalidDocument("bad key"))
    assert not is_store_failure(OverflowError("bug")) and not is_store_failure(ProtocolError("bad call"))
