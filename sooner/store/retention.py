"""Retention by a date field: pruning old documents the one way that is fast on the embedded server too, and the
TTL index that does it on a real MongoDB (``run_output`` and ``samples`` share both)."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sooner.store import Store

logger = logging.getLogger(__name__)


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


def shape_age_index(store: Store, collection: Any, keys: list[tuple[str, int]], ttl_s: int | None, marker: str) -> None:
    """Make the index on ``keys`` a TTL index of ``ttl_s`` seconds, or a plain one for None; once per value.

    ``marker`` names the ``sooner_meta`` document remembering the last shape, so a store
    that opens often asks the server nothing once done. A TTL that changes is moved with
    ``collMod``, or by dropping and creating the index where that does not take.
    """
    from sooner.store import schema

    meta = store.collection(schema.META)
    stored = ttl_s or 0
    if store.retry(lambda: meta.find_one({"_id": marker, "ttl_s": stored})):
        return
    store.retry(lambda: _shape(collection, keys, ttl_s))
    store.retry(lambda: meta.update_one({"_id": marker}, {"$set": {"ttl_s": stored}}, upsert=True))


def server_sweeps(store: Store, collection: Any) -> bool:
    """Whether the server expires TTL documents in the background: a real MongoDB, not nx-27017 or mongomock.

    nx-27017 honours TTL indexes by purging on every read of the collection (a scan that
    doubled output reads), and mongomock never expires anything: there the age index is
    plain and the repository prunes through it with :func:`prune_by_age`.
    """
    from pymongo.errors import OperationFailure

    known = getattr(store, "_server_sweeps", None)  # asked once per store: every retention shaping at open needs it
    if known is not None:
        return bool(known)
    if store.is_mongomock:
        return False
    try:
        status = store.retry(lambda: collection.database.command("serverStatus"))
        sweeps = status.get("process") != "nx_27017"
    except OperationFailure:  # not allowed to ask (no clusterMonitor role): only a real MongoDB checks roles
        sweeps = True
    store._server_sweeps = sweeps  # type: ignore[attr-defined]
    return sweeps


def _shape(collection: Any, keys: list[tuple[str, int]], ttl_s: int | None) -> None:
    from pymongo.errors import OperationFailure

    existing = _index_on(collection, keys)
    if existing is not None and existing.get("expireAfterSeconds") == ttl_s:
        return
    if existing is not None and ttl_s is not None and "expireAfterSeconds" in existing:
        try:
            collection.database.command("collMod", collection.name,
                                        index={"name": existing["name"], "expireAfterSeconds": ttl_s})
        except OperationFailure as exc:
            logger.info("collMod refused (%s); dropping and creating the index on %s instead", exc, keys)
        existing = _index_on(collection, keys)
        if existing is not None and existing.get("expireAfterSeconds") == ttl_s:
            return
    if existing is not None:
        collection.drop_index(existing["name"])
    options = {} if ttl_s is None else {"expireAfterSeconds": ttl_s}
    collection.create_index(keys, **options)


def _index_on(collection: Any, keys: list[tuple[str, int]]) -> dict[str, Any] | None:
    wanted = [(key, int(order)) for key, order in keys]
    for index in collection.list_indexes():
        if [(key, int(order)) for key, order in index["key"].items()] == wanted:
            return dict(index)
    return None
