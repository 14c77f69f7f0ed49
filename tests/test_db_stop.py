"""`sooner db stop` with a long operation in flight: the embedded server exits on SIGTERM within its bound.

Before the fix, nx-27017's SIGTERM handler raised SystemExit in the event
loop and ``asyncio.run`` joined the executor thread running the operation:
on a million queue entries an unindexed ``count_documents`` (~36 s) outlasted
``stop``'s 10 s, and the server was killed. The rows here are generated in
SQL (copies of one document the server wrote, so the format is its own):
inserting them over the wire would take minutes.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import psutil
from pymongo import MongoClient
from pymongo.errors import PyMongoError

from sooner.store.embedded import STOP_TIMEOUT_S, EmbeddedServer
from sooner.store.nx_server import STOP_BOUND_S

from conftest import run_sooner, wait_for

ROWS = 300_000


def fill(data_dir: Path, collection: str, rows: int) -> None:
    """Copy the collection's one document ``rows`` times, each with its own ``_id`` and ``i``."""
    with sqlite3.connect(data_dir / "sooner.db") as db:
        (sample,) = db.execute(f"SELECT data FROM {collection} LIMIT 1").fetchone()
        document = json.loads(sample)
        db.execute(f"DELETE FROM {collection}")
        db.execute(
            f"WITH RECURSIVE n(k) AS (SELECT 1 UNION ALL SELECT k + 1 FROM n WHERE k < ?) "
            f"INSERT INTO {collection} (_id, data) SELECT printf('%024x', k), "
            f"json_set(?, '$._id.id', printf('%024x', k), '$.i', k) FROM n",
            (rows, json.dumps(document)))


def server_process(server: EmbeddedServer) -> psutil.Process:
    record = json.loads(server.info_file.read_text())
    return psutil.Process(record["pid"])


def test_db_stop_ends_the_server_by_sigterm_while_a_long_count_runs(tmp_path: Path, caplog):
    # given an embedded server whose queue holds many entries
    server = EmbeddedServer(tmp_path / ".sooner", idle_stop_s=0)
    client: MongoClient = MongoClient(server.ensure_running(keep=True), directConnection=True)
    client.sooner.q_big.insert_one({"i": 0, "status": "new", "payload": "x" * 40})
    client.close()
    server.stop()
    fill(server.data_dir, "q_big", ROWS)
    url = server.ensure_running(keep=True)
    process = server_process(server)

    # and a count that scans them all, in flight
    # (no read retry, a short server selection: the server's exit must show as an error at once)
    client = MongoClient(url, directConnection=True, socketTimeoutMS=120_000, retryReads=False,
                         serverSelectionTimeoutMS=2000)
    outcome: list[object] = []

    def count() -> None:
        try:
            outcome.append(client.sooner.q_big.count_documents({"status": "new", "i": {"$gte": 0}}))
        except PyMongoError as exc:
            outcome.append(exc)
    counting = threading.Thread(target=count, daemon=True)
    before = process.cpu_times().user
    counting.start()
    wait_for(lambda: process.cpu_times().user - before > 0.5, timeout=60, message="the count to be running")
    assert not outcome, f"the count ended before the test could stop the server: {outcome}"

    # when the server is stopped
    stopping = threading.Thread(target=server.stop)
    with caplog.at_level(logging.WARNING, logger="sooner.store.embedded"):
        stopping.start()
        # then it is gone by SIGTERM within its bound, well before stop() would kill it
        wait_for(lambda: not stopping.is_alive(), timeout=STOP_BOUND_S + (STOP_TIMEOUT_S - STOP_BOUND_S) / 2,
                 message="db stop to return")
    assert "ignored SIGTERM" not in caplog.text
    assert not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    assert "operation(s) in flight, interrupted" in server.log_file.read_text()
    # and the client got an error, not a hang
    wait_for(lambda: outcome, timeout=30, message="the count to fail")
    assert isinstance(outcome[0], PyMongoError), outcome
    client.close()

    # and the data is all there at the next start
    client = MongoClient(server.ensure_running(keep=True), directConnection=True)
    assert client.sooner.q_big.estimated_document_count() == ROWS
    client.close()
    server.stop()


def test_db_stop_says_what_it_does(tmp_path: Path):
    # given a site whose embedded database runs
    site = tmp_path / "site"
    assert run_sooner("init", str(site), cwd=tmp_path).returncode == 0
    assert run_sooner("db", "start", cwd=site).returncode == 0
    # when it is stopped
    result = run_sooner("db", "stop", cwd=site)
    # then the command names the process, the signal and its deadline, and the outcome
    assert result.returncode == 0, result.stderr
    assert "SIGTERM" in result.stdout and "waiting up to" in result.stdout, result.stdout
    assert "embedded database stopped" in result.stdout
    status = subprocess.run([sys.executable, "-m", "sooner", "db", "status"], cwd=site, capture_output=True,
                            text=True)
    assert "stopped" in status.stdout


def test_db_stop_while_clients_keep_writing_exits_cleanly_and_keeps_every_acknowledged_write(tmp_path: Path):
    # given an embedded server (one thread per connection) and four clients inserting as fast as they can
    server = EmbeddedServer(tmp_path / ".sooner", idle_stop_s=0)
    url = server.ensure_running(keep=True)
    process = server_process(server)
    client = MongoClient(url, directConnection=True, retryWrites=False, serverSelectionTimeoutMS=1000)
    acknowledged: list[list[int]] = [[] for _ in range(4)]

    def write(mine: list[int], offset: int) -> None:
        for i in range(offset, offset + 1_000_000, 1):
            try:
                client.sooner.stream.insert_one({"_id": i})
            except PyMongoError:
                return
            mine.append(i)
    writers = [threading.Thread(target=write, args=(mine, n * 1_000_000), daemon=True)
               for n, mine in enumerate(acknowledged)]
    for writer in writers:
        writer.start()
    wait_for(lambda: all(len(mine) > 20 for mine in acknowledged), timeout=30, message="every client to write")

    # when the server is stopped under that load
    server.stop()

    # then it exited by SIGTERM within its bound, closing its databases (no operation was left running)
    for writer in writers:
        writer.join(30)
    assert not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    log = server.log_file.read_text()
    assert "signal 15: stopping" in log, log
    assert "still running after" not in log and "closing the databases failed" not in log, log
    client.close()
    # and every insert a client was told succeeded is there after the next start
    client = MongoClient(server.ensure_running(keep=True), directConnection=True)
    stored = {doc["_id"] for doc in client.sooner.stream.find({}, {"_id": 1})}
    missing = [i for mine in acknowledged for i in mine if i not in stored]
    assert not missing, f"{len(missing)} acknowledged inserts lost, e.g. {missing[:5]}"
    client.close()
    server.stop()
