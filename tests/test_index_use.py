"""The queries workers and schedulers repeat all day are answered from an index on the embedded server.

nx-27017 hands each filter to neosqlite, which writes it as SQL. Whether SQLite
can answer that SQL from an index depends on the filter's shape: a bare
``{"status": "running"}`` beside a date condition becomes ``= 'running' OR <an
array holding 'running'>``, which SQLite answers by reading every row, so the
scheduler's lease check read the whole run history on every tick (100 ms at
30,000 runs, 2 ms from the index; see ``schema.eq``). These tests issue the hot
queries through the store on the real embedded server, record the filters
PyMongo sent, translate each with the server's own neosqlite on a snapshot of
the server's database file, and read SQLite's query plan: no plan may scan
the query's table. No time is measured; a filter of the old shape fails.
"""

from __future__ import annotations

import sqlite3
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import neosqlite
import pytest
from pymongo import MongoClient, monitoring

from sooner.config import load_settings
from sooner.model import ManualTrigger
from sooner.runs.service import RunService
from sooner.store import Store, open_store, schema
from sooner.worker.testing import deploy_files


@dataclass(frozen=True)
class Query:
    """A command's filter and the cursor options the server applies with it (as nx-27017's handler does)."""

    collection: str
    command: str
    filter: dict[str, Any]
    sort: dict[str, int] = field(default_factory=dict)
    limit: int | None = None
    skip: int | None = None
    pipeline: list[dict[str, Any]] | None = None


class Queries(monitoring.CommandListener):
    """The queries PyMongo sends while ``recording``."""

    def __init__(self) -> None:
        self.recording = False
        self.seen: list[Query] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        command, name = event.command, event.command_name
        collection = command.get(name)
        if not self.recording or not isinstance(collection, str):
            return
        if name in ("find", "count", "findAndModify", "distinct"):
            self.seen.append(Query(collection, name, dict(command.get("filter", command.get("query")) or {}),
                                   dict(command.get("sort") or {}), command.get("limit"), command.get("skip")))
        elif name in ("update", "delete"):
            for statement in command.get("updates", command.get("deletes", [])):
                self.seen.append(Query(collection, name, dict(statement.get("q") or {})))
        elif name == "aggregate":
            self.seen.append(Query(collection, name, {}, pipeline=list(command.get("pipeline") or [])))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


@pytest.fixture
def recorded(embedded_site: Path, monkeypatch) -> tuple[Store, Queries]:
    """A store on the embedded server whose queries a :class:`Queries` sees."""
    queries = Queries()

    def client_with_listener(url: str) -> MongoClient:
        return MongoClient(url, tz_aware=True, event_listeners=[queries])

    monkeypatch.setattr("sooner.store.make_client", client_with_listener)
    settings = load_settings(embedded_site / "config.json", environ={},
                             overrides={"database": f"t{uuid.uuid4().hex[:12]}"})
    store = open_store(settings)
    yield store, queries
    store.client.drop_database(settings.database)
    store.close()


def full_scans(store: Store, queries: list[Query], tmp_path: Path) -> list[str]:
    """Each query whose SQL, as the server's neosqlite writes it, reads its whole table: 'query -> plan'."""
    assert store.embedded is not None, "the store is not on the embedded server"
    snapshot = tmp_path / "snapshot.db"
    with sqlite3.connect(store.embedded.data_dir / f"{store.database_name}.db") as live, \
            sqlite3.connect(snapshot) as copy:
        live.backup(copy)  # the server's tables and indexes as they are, WAL included
    connection = neosqlite.Connection(str(snapshot))
    statements: list[str] = []
    connection.db.set_trace_callback(statements.append)
    found = []
    try:
        for query in queries:
            statements.clear()
            collection = connection[query.collection]
            if query.pipeline is not None:
                list(collection.aggregate(query.pipeline))
            else:
                cursor = collection.find(query.filter)
                if query.sort:
                    cursor = cursor.sort(list(query.sort.items()))
                if query.limit:
                    cursor = cursor.limit(query.limit)
                if query.skip:
                    cursor = cursor.skip(query.skip)
                list(cursor)
            table = f" {query.collection}"
            selects = [s for s in statements if s.lstrip().upper().startswith(("SELECT", "WITH")) and table in s]
            assert selects, f"neosqlite ran no query on {query.collection} for {query!r}"
            for sql in selects:
                plan = [row[3] for row in connection.db.execute("EXPLAIN QUERY PLAN " + sql)]
                if any(_reads_every_row(step, sql, query.collection) for step in plan):
                    found.append(f"{query!r} -> {plan}")
    finally:
        connection.close()
    return found


def _reads_every_row(step: str, sql: str, table: str) -> bool:
    """Whether a plan step reads the whole table.

    Two index walks do not: one in index order that a ``LIMIT`` stops (the newest runs), and
    the ``COUNT(1)`` of the whole collection that neosqlite's aggregate takes first, from the
    smallest index, before it runs the pipeline's indexed ``$match``.
    """
    if step != f"SCAN {table}" and not step.startswith(f"SCAN {table} "):
        return False
    if " USING " in step and (" LIMIT " in sql.upper() or sql.strip().upper() == f"SELECT COUNT(1) FROM {table.upper()}"):
        return False
    return True


def _queued(store: Store, count: int) -> list[str]:
    deploy_files(store, {"noop.sh": "#!/bin/sh\nexit 0\n"})
    service = RunService(store)
    return [run.id for run in (service.queue("noop.sh", ManualTrigger()) for _ in range(count)) if run]


HOT: dict[str, Callable[[Store], object]] = {
    "a worker's poll for runs to claim": lambda store: store.runs.claim_offers("w1", ["gpu"], now=store.clock.now()),
    "the scheduler's look for expired leases": lambda store: store.runs.expired_leases(now=store.clock.now()),
    "running runs of a worker": lambda store: store.runs.running("w1"),
    "running runs": lambda store: store.runs.running(),
    "a run end's look for waiting runs": lambda store: store.runs.promote_waiting("noop.sh", now=store.clock.now()),
    "lost runs of a host": lambda store: store.runs.lost_on_host("h1"),
    "the queue depth sample": lambda store: store.metrics.active_runs(),
    "the dashboard": lambda store: store.reads.dashboard_runs(),
    "the dead man's switch's unstarted ticks": lambda store: store.reads.unstarted_tick_runs("cron"),
    "a job's history": lambda store: store.reads.job_history("noop.sh"),
    "a job's missed ticks, second page": lambda store: store.missed.page("noop.sh", before=store.clock.now()),
    "events of a name, second page": lambda store: store.events.list(name="x", before=store.clock.now()),
    "a takeover's look for a trigger's latest fire": lambda store: store.reads.latest_fire(
        "noop.sh", "cron", after=store.clock.now()),
}


@pytest.mark.parametrize("what", list(HOT))
def test_a_repeated_query_is_answered_from_an_index(recorded, what: str, tmp_path: Path) -> None:
    store, queries = recorded
    _queued(store, 3)
    queries.recording = True
    HOT[what](store)
    queries.recording = False
    assert queries.seen, f"{what}: no query was recorded"
    assert full_scans(store, queries.seen, tmp_path) == []


def test_the_check_catches_a_bare_equality_beside_a_date(recorded, tmp_path: Path) -> None:
    """The check itself can fail: the shape the lease check used before reads every run."""
    store, _ = recorded
    _queued(store, 1)
    bare = Query(schema.RUNS, "find", {"status": "running", "lease_until": {"$lt": store.clock.now()}})
    scans = full_scans(store, [bare], tmp_path)
    assert len(scans) == 1 and "SCAN runs" in scans[0]
