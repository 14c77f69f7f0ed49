"""Timestamps stay BSON dates through every write path, on every store (see sooner/store/nx_server.py)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from pymongo import ReturnDocument


def test_dates_set_on_existing_documents_stay_dates(any_store):
    collection = any_store.collection("dates")
    now = datetime(2026, 3, 29, 1, 30, 15, 123000, tzinfo=timezone.utc)
    collection.insert_one({"_id": 1, "a": now})
    collection.update_one({"_id": 1}, {"$set": {"b": now}})
    collection.find_one_and_update({"_id": 1}, {"$set": {"c": now + timedelta(hours=1)}},
                                   return_document=ReturnDocument.AFTER)
    collection.update_many({"_id": 1}, {"$set": {"a": now - timedelta(days=1)}})
    document = collection.find_one({"_id": 1})
    for key in "abc":
        assert isinstance(document[key], datetime), f"{key} came back as {type(document[key]).__name__}"
    assert document["c"] - document["b"] == timedelta(hours=1)
    assert collection.find_one({"c": {"$gt": now}})["_id"] == 1
    assert collection.find_one({"b": {"$lt": now}}) is None


def test_job_timestamps_are_dates_after_changes(any_store):
    any_store.jobs.record_deployed("a.sh", commit="c1", blob="b1")
    job = any_store.jobs.set_enabled("a.sh", True)
    assert isinstance(job.updated_at, datetime)
    assert isinstance(any_store.jobs.get("a.sh").created_at, datetime)
