"""Queue collections (the Sooner.io Queue model) on every store: timestamps, ids, names, claims."""

from __future__ import annotations

from datetime import datetime

import pytest
from bson import ObjectId

from sooner.store.queues import InvalidQueueName, entry_id


def test_entries_keep_created_and_updated_times(any_store):
    queue = any_store.queues("jobs_to_do")
    entry = queue.put({"n": 1})
    assert isinstance(entry["_id"], ObjectId)
    assert entry["createdAt"] == entry["updatedAt"]
    stored = queue.get(entry["_id"])
    assert isinstance(stored["createdAt"], datetime) and stored["status"] == "pending"

    claimed = queue.claim()
    assert claimed["createdAt"] == entry["createdAt"] and claimed["updatedAt"] >= entry["updatedAt"]
    done = queue.update(entry["_id"], status="done")
    assert done["data"] == {"n": 1}  # data is kept when only the status changes


def test_entries_are_found_by_object_id_its_hex_string_or_a_script_chosen_id(any_store):
    queue = any_store.queues("q")
    entry = queue.put("text data")
    assert queue.get(str(entry["_id"]))["data"] == "text data"
    assert queue.get(entry["_id"])["data"] == "text data"
    queue.collection.insert_one({"_id": "order-17", "status": "pending", "data": 17})
    assert queue.update("order-17", data=18)["data"] == 18
    assert entry_id("not-an-object-id-at-all!") == "not-an-object-id-at-all!"
    assert queue.delete(entry["_id"]) and not queue.delete(entry["_id"])
    assert queue.get(entry["_id"]) is None


def test_claim_moves_the_oldest_entry_between_any_two_statuses(any_store):
    queue = any_store.queues("pipeline")
    for i in range(3):
        queue.put(i, status="new")
    assert queue.claim("pending", "working") is None
    assert [queue.claim("new", "parsing")["data"] for _ in range(2)] == [0, 1]
    assert queue.claim("parsing", "parsed")["data"] == 0
    assert queue.counts() == {"new": 1, "parsing": 1, "parsed": 1}
    assert [e["data"] for e in queue.find(status="parsing")] == [1]


@pytest.mark.parametrize("name", ["", "a b", "x" * 65, "../runs", "runs.x", "ü", "to-do"])
def test_invalid_queue_names_are_refused_clearly(any_store, name):
    with pytest.raises(InvalidQueueName, match="invalid queue name"):
        any_store.queues(name)


def test_queue_names_lists_existing_queues_only(any_store):
    any_store.queues("b").put(1)
    any_store.queues("a").put(1)
    any_store.jobs.record_deployed("x.sh", commit="c", blob="b")
    assert any_store.queues.names() == ["a", "b"]
