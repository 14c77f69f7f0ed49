"""Unordered bulk writes: many inserts and updates in one round trip, with the duplicates named.

One place for the round trip the scheduler's tick, the deploy and the schema
upgrade batch their writes into. mongomock's ``bulk_write`` does not take
PyMongo 4's operation classes, so there the same operations are applied one by
one, with the same answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence, Union

from pymongo import InsertOne, UpdateOne
from pymongo.errors import BulkWriteError, DuplicateKeyError

from sooner.errors import StoreError

if TYPE_CHECKING:
    from sooner.store import Store

DUPLICATE_KEY_CODES = (11000, 11001)


@dataclass(frozen=True)
class Insert:
    document: dict[str, Any]


@dataclass(frozen=True)
class Update:
    query: dict[str, Any]
    change: dict[str, Any]
    upsert: bool = False


Operation = Union[Insert, Update]


def bulk_write(store: Store, collection: Any, operations: Sequence[Operation]) -> set[int]:
    """Apply ``operations`` unordered; returns the indexes of those refused as duplicate keys.

    An upserting update whose query matched nothing while its ``_id`` exists is such a
    duplicate too (how a compare-and-set upsert says it lost). Any other refusal raises
    StoreError naming it; unreachable databases are retried by the store.
    """
    if not operations:
        return set()
    if all(isinstance(op, Insert) for op in operations):
        return insert_all(store, collection, [op.document for op in operations])  # type: ignore[union-attr]
    if store.is_mongomock:
        return _one_by_one(collection, operations)
    requests = [InsertOne(op.document) if isinstance(op, Insert) else UpdateOne(op.query, op.change, upsert=op.upsert)
                for op in operations]
    try:
        store.retry(lambda: collection.bulk_write(requests, ordered=False))
    except BulkWriteError as exc:
        return _duplicates(collection, exc)
    return set()


def insert_all(store: Store, collection: Any, documents: Sequence[dict[str, Any]]) -> set[int]:
    """Insert ``documents`` unordered (one ``insert_many``); returns the indexes refused as duplicate keys.

    Callers whose documents are content-addressed or idempotent (output chunks by seq,
    git objects by sha, a retried batch) simply ignore the answer.
    """
    if not documents:
        return set()
    try:
        store.retry(lambda: collection.insert_many(list(documents), ordered=False))
    except BulkWriteError as exc:
        return _duplicates(collection, exc)
    return set()


def _duplicates(collection: Any, exc: BulkWriteError) -> set[int]:
    errors = exc.details.get("writeErrors", [])
    other = [error for error in errors if error.get("code") not in DUPLICATE_KEY_CODES]
    if other:
        raise StoreError(f"the database refused a write to {collection.name}: {other[0].get('errmsg')}") from exc
    return {int(error["index"]) for error in errors}


def _one_by_one(collection: Any, operations: Sequence[Operation]) -> set[int]:
    refused = set()
    for index, op in enumerate(operations):
        try:
            if isinstance(op, Insert):
                collection.insert_one(dict(op.document))
            else:
                collection.update_one(op.query, op.change, upsert=op.upsert)
        except DuplicateKeyError:
            refused.add(index)
    return refused
