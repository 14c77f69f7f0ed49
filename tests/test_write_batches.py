"""A write command's documents commit together on the embedded server, with MongoDB's answers unchanged.

The launcher (``sooner.store.nx_server.batch_writes``) runs each write command
in one SQLite transaction instead of one commit per document. What clients see
must stay what MongoDB (and mongomock) answer: duplicate keys fail alone, an
ordered batch stops at its first error, a client's own transaction still commits
or aborts as one, and an acknowledged batch survives ``kill -9`` of the server.
"""

from __future__ import annotations

import os
import signal
import uuid

import psutil
import pytest
from pymongo.errors import BulkWriteError

from sooner.config import load_settings
from sooner.store import open_store
from sooner.store.bulk import Insert, Update, bulk_write
from sooner.store.embedded import EmbeddedServer


def test_an_unordered_batch_stores_everything_but_its_duplicate(any_store):
    collection = any_store.collection("batches")
    collection.insert_one({"_id": 5})
    with pytest.raises(BulkWriteError) as raised:
        collection.insert_many([{"_id": i} for i in range(10)], ordered=False)
    errors = raised.value.details["writeErrors"]
    assert [(e["index"], e["code"]) for e in errors] == [(5, 11000)]
    assert sorted(d["_id"] for d in collection.find()) == list(range(10))


def test_an_ordered_batch_stops_at_its_first_error_and_keeps_what_came_before(any_store):
    collection = any_store.collection("batches")
    collection.insert_one({"_id": 3})
    with pytest.raises(BulkWriteError) as raised:
        collection.insert_many([{"_id": i} for i in range(6)], ordered=True)
    assert raised.value.details["nInserted"] == 3
    assert sorted(d["_id"] for d in collection.find()) == [0, 1, 2, 3]


def test_a_bulk_of_updates_applies_all_but_the_one_that_collides(any_store):
    collection = any_store.collection("batches")
    collection.create_index("key", unique=True)
    collection.insert_many([{"_id": i, "key": i, "n": 0} for i in range(4)])
    refused = bulk_write(any_store, collection, [Update({"_id": 0}, {"$set": {"n": 1}}),
                                                 Update({"_id": 1}, {"$set": {"key": 2}}),  # key 2 is taken
                                                 Update({"_id": 2}, {"$set": {"n": 1}}),
                                                 Insert({"_id": 9, "key": 9, "n": 1})])
    assert refused == {1}
    assert {d["_id"]: (d["key"], d["n"]) for d in collection.find()} == {
        0: (0, 1), 1: (1, 0), 2: (2, 1), 3: (3, 0), 9: (9, 1)}


def test_a_clients_own_transaction_still_commits_or_aborts_as_one(embedded_store):
    collection = embedded_store.collection("batches")
    collection.insert_one({"_id": "before"})
    with embedded_store.client.start_session() as session:
        with session.start_transaction():
            collection.insert_many([{"_id": "kept-1"}, {"_id": "kept-2"}], session=session)
            collection.update_one({"_id": "before"}, {"$set": {"seen": "yes"}}, session=session)
    with embedded_store.client.start_session() as session:
        session.start_transaction()
        collection.insert_many([{"_id": "dropped-1"}, {"_id": "dropped-2"}], session=session)
        session.abort_transaction()
    assert sorted(d["_id"] for d in collection.find()) == ["before", "kept-1", "kept-2"]
    assert collection.find_one({"_id": "before"})["seen"] == "yes"


def test_an_acknowledged_batch_survives_kill_9_of_the_server(site):
    settings = load_settings(site / "config.json", environ={}, overrides={"database": f"t{uuid.uuid4().hex[:8]}"})
    store = open_store(settings)
    try:
        store.collection("batches").insert_many([{"_id": i, "k": i, "payload": "x" * 100} for i in range(500)])
        store.collection("batches").update_many({"k": {"$lt": 250}}, {"$set": {"half": True}})
        pid = EmbeddedServer(settings.state_dir).status().pid
        assert pid is not None
        server = psutil.Process(pid)
        os.kill(pid, signal.SIGKILL)
        server.wait(30)
    finally:
        store.close()
    store = open_store(settings)  # starts a new server on the same files
    try:
        assert EmbeddedServer(settings.state_dir).status().pid != pid
        assert store.collection("batches").count_documents({}) == 500
        assert store.collection("batches").count_documents({"half": True}) == 250
    finally:
        store.close()
