"""Queue collections (``queue_<name>``): the Sooner.io Queue model.

Each entry has ``_id``, ``status``, ``data``, ``createdAt`` and ``updatedAt``;
the last two are maintained here. Scripts keep their work in queues and people
browse them in the web UI.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from bson import ObjectId
from bson.errors import InvalidId
from pymongo import ReturnDocument

from sooner.errors import SoonerError
from sooner.store import schema
from sooner.store.jobs import utcnow

if TYPE_CHECKING:
    from sooner.store import Store

_QUEUE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class InvalidQueueName(SoonerError, ValueError):
    """A queue name is not 1-64 letters, digits, '_' or '-'."""

    def __init__(self, name: str) -> None:
        super().__init__(f"invalid queue name {name!r}: use 1-64 letters, digits, '_' or '-'")


def entry_id(value: Any) -> Any:
    """Accept an ObjectId, its hex string, or any other id a script chose."""
    if isinstance(value, str) and len(value) == 24:
        try:
            return ObjectId(value)
        except InvalidId:
            return value
    return value


class Queue:
    """One queue collection with helpers that keep the timestamps right."""

    def __init__(self, store: Store, name: str) -> None:
        if not _QUEUE_NAME.match(name):
            raise InvalidQueueName(name)
        self.store = store
        self.name = name
        self.collection = store.collection(schema.QUEUE_PREFIX + name)
        self._indexed = False

    def _ensure_indexes(self) -> None:
        if not self._indexed:
            def create() -> None:
                for keys, options in schema.QUEUE_INDEXES:
                    self.collection.create_index(keys, **options)
            self.store.retry(create)
            self._indexed = True

    def put(self, data: Any, status: str = "pending") -> dict:
        """Add an entry; returns it (with ``_id``)."""
        self._ensure_indexes()
        now = utcnow()
        entry = {"_id": ObjectId(), "status": status, "data": data, "createdAt": now, "updatedAt": now}
        self.store.retry(lambda: self.collection.insert_one(entry))
        return entry

    def find(self, status: str | None = None, limit: int = 0) -> list[dict]:
        """Entries (oldest first), optionally only those with ``status``."""
        query = {} if status is None else {"status": status}
        return self.store.retry(lambda: list(self.collection.find(query).sort("createdAt", 1).limit(limit)))

    def get(self, entry: Any) -> dict | None:
        return self.store.retry(lambda: self.collection.find_one({"_id": entry_id(entry)}))

    def claim(self, status_from: str = "pending", status_to: str = "working") -> dict | None:
        """Atomically move the oldest entry with ``status_from`` to ``status_to`` and return it."""
        return self.store.retry(lambda: self.collection.find_one_and_update(
            {"status": status_from}, {"$set": {"status": status_to, "updatedAt": utcnow()}},
            sort=[("createdAt", 1)], return_document=ReturnDocument.AFTER))

    def update(self, entry: Any, *, status: str | None = None, data: Any = None) -> dict | None:
        """Set ``status`` and/or replace ``data``; returns the entry or None if it does not exist."""
        fields: dict[str, Any] = {"updatedAt": utcnow()}
        if status is not None:
            fields["status"] = status
        if data is not None:
            fields["data"] = data
        return self.store.retry(lambda: self.collection.find_one_and_update(
            {"_id": entry_id(entry)}, {"$set": fields}, return_document=ReturnDocument.AFTER))

    def delete(self, entry: Any) -> bool:
        return self.store.retry(lambda: self.collection.delete_one({"_id": entry_id(entry)})).deleted_count == 1

    def counts(self) -> dict[str, int]:
        """Entries per status (an aggregation: fast on the embedded server, unlike count_documents)."""
        rows = self.store.retry(lambda: list(self.collection.aggregate(
            [{"$group": {"_id": "$status", "n": {"$sum": 1}}}])))
        return {str(row["_id"]): row["n"] for row in rows}


class QueueRepo:
    """Access to queue collections by name."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def __call__(self, name: str) -> Queue:
        return Queue(self.store, name)

    def names(self) -> list[str]:
        """Names of existing queues."""
        prefix = schema.QUEUE_PREFIX
        names = self.store.retry(lambda: self.store.db.list_collection_names())
        return sorted(n[len(prefix):] for n in names if n.startswith(prefix))
