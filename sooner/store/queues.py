"""Queue collections (``queue_<name>``): the Sooner.io Queue model.

Each entry has ``_id``, ``status``, ``data``, ``createdAt`` and ``updatedAt``;
the last two are maintained here. Scripts keep their work in queues and people
browse them in the web UI.
"""

from __future__ import annotations

import logging
import math
import re
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable, Iterable, TypeVar

import pymongo
from bson import ObjectId
from bson.errors import InvalidId
from pymongo import ReturnDocument
from pymongo.errors import OperationFailure, PyMongoError, ServerSelectionTimeoutError

from sooner.errors import SoonerError, StoreError
from sooner.store import schema

if TYPE_CHECKING:
    from sooner.store import Store

logger = logging.getLogger(__name__)

T = TypeVar("T")

QUERY_BUDGET_S = 2.0  # a browsing query gives up after this (a slow filter on a big queue)
MAX_DATA_INDEXES = 6  # single-field indexes on data.<key> per queue, created for sorting
SEARCH_WINDOW = 20_000  # a search reads at most this many entries of the view per text column
ESTIMATE_MAX_AGE_S = 30.0
EXACT_SIZE_BELOW = 1000  # a queue whose estimate is at most this is counted exactly (a $count of ≤ 1,001 entries)
EXACT_SIZE_MAX_AGE_S = 2.0
UNINDEXABLE_MAX_AGE_S = 300.0  # how long a refused index on a field is not asked for again

# No '-': the embedded nx-27017 server refuses collection names with one, and a
# queue must work the same on every store.
_QUEUE_NAME = re.compile(r"^[A-Za-z0-9_]{1,64}$")
_ENTRY_STATUS = re.compile(r"[\w.:-]{1,64}")


class InvalidQueueName(SoonerError, ValueError):
    """A queue name is not 1-64 letters, digits or '_'."""

    def __init__(self, name: str) -> None:
        super().__init__(f"invalid queue name {name!r}: use 1-64 letters, digits or '_'")


class InvalidEntryStatus(SoonerError, ValueError):
    """A queue entry status typed by a user is not 1-64 letters, digits, '_', '-', '.' or ':'."""

    def __init__(self, status: object) -> None:
        super().__init__(f"status {str(status)[:70]!r} is not valid: use 1-64 letters, digits, '_', '-', '.' or ':'")


def validate_entry_status(status: Any) -> str:
    """``status`` if a person may set it on an entry (the Queues page's bulk action and the REST API)."""
    if not isinstance(status, str) or not _ENTRY_STATUS.fullmatch(status):
        raise InvalidEntryStatus(status)
    return status


class QueueQueryTimeout(StoreError):
    """A query on a queue took longer than its time budget."""

    def __init__(self, queue: str, seconds: float) -> None:
        self.queue = queue
        super().__init__(f"the query on queue {queue!r} took more than {seconds:g} s: narrow it with a status or "
                         "an exact value, or sort by the column you filter on")


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
        now = self.store.clock.now()
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
            {"status": status_from}, {"$set": {"status": status_to, "updatedAt": self.store.clock.now()}},
            sort=[("createdAt", 1)], return_document=ReturnDocument.AFTER))

    def update(self, entry: Any, *, status: str | None = None, data: Any = None, exact: bool = False) -> dict | None:
        """Set ``status`` and/or replace ``data``; returns the entry or None if it does not exist.

        ``exact``: ``entry`` is the ``_id`` itself (the web's decoded ids), not also a hex string of an ObjectId.
        """
        fields: dict[str, Any] = {"updatedAt": self.store.clock.now()}
        if status is not None:
            fields["status"] = status
        if data is not None:
            fields["data"] = data
        return self.store.retry(lambda: self.collection.find_one_and_update(
            {"_id": entry if exact else entry_id(entry)}, {"$set": fields}, return_document=ReturnDocument.AFTER))

    def delete(self, entry: Any) -> bool:
        return self.store.retry(lambda: self.collection.delete_one({"_id": entry_id(entry)})).deleted_count == 1

    def counts(self) -> dict[str, int]:
        """Entries per status (an aggregation: fast on the embedded server, unlike count_documents)."""
        rows = self.store.retry(lambda: list(self.collection.aggregate(
            [{"$group": {"_id": "$status", "n": {"$sum": 1}}}])))
        return {str(row["_id"]): row["n"] for row in rows}

    # -- browsing (the web UI) -------------------------------------------------
    # Queries here are shaped for the embedded nx-27017 server too, whose
    # planner only walks the index of the sort key for some query forms
    # (see _shape_for_embedded) and which evaluates $or, $and and BSON-date
    # comparisons in Python (seconds on 1,000,000 entries).

    def get_exact(self, entry: Any) -> dict | None:
        """The entry whose ``_id`` is exactly ``entry`` (no hex-string conversion)."""
        return self.store.retry(lambda: self.collection.find_one({"_id": entry}))

    def counts_by_status(self, *, max_age_s: float = 60.0, timeout_s: float = QUERY_BUDGET_S) -> dict[str, int]:
        """:meth:`counts`, remembered for ``max_age_s`` and given up after ``timeout_s``."""
        def compute() -> dict[str, int]:
            rows = self._bounded(lambda: list(self.collection.aggregate(
                [{"$group": {"_id": "$status", "n": {"$sum": 1}}}])), timeout_s)
            return {str(row["_id"]): row["n"] for row in rows}
        return self.store.queues.cached(("counts", self.name), max_age_s, compute)

    def sample(self, n: int = 200) -> list[dict]:
        """The newest ``n`` entries (their data keys become the table's columns)."""
        return self.store.retry(lambda: list(self.collection.find().sort("createdAt", -1).limit(n)))

    def page(self, query: dict, sort: tuple[str, int], *, skip: int = 0, limit: int = 50,
             timeout_s: float = QUERY_BUDGET_S) -> list[dict]:
        """Entries matching ``query`` (built by :mod:`sooner.store.queue_filters`), ordered by ``sort`` = (field, 1|-1).

        Raises :class:`QueueQueryTimeout` after ``timeout_s``.
        """
        shaped = self._shape(query, sort[0], skip + limit)
        return self._bounded(lambda: list(self.collection.find(shaped).sort([sort]).skip(skip).limit(limit)),
                             timeout_s)

    def search_page(self, query: dict, branches: Iterable[dict], sort: tuple[str, int], *, skip: int = 0,
                    limit: int = 50, window: int = SEARCH_WINDOW,
                    timeout_s: float = QUERY_BUDGET_S) -> tuple[list[dict], bool]:
        """Like :meth:`page` for entries matching ``query`` and at least one of ``branches``.

        One query per branch, merged here: the embedded server evaluates
        ``$or`` in Python (17 s on 1,000,000 entries) but each branch in SQL.
        Only the first ``window`` entries of ``query`` in this order are
        searched, because a text nobody wrote makes a regex read every entry
        (3.5 s per column on 1,000,000). Returns the rows and whether the
        search covered every entry.
        """
        merged: dict[Any, dict] = {}
        complete = True

        def run() -> None:
            nonlocal complete
            bound = self._window_bound(query, sort, window)
            complete = bound is None
            for branch in branches:
                combined = _both(_both(query, branch), bound or {})
                shaped = self._shape(combined, sort[0], skip + limit)
                for entry in self.collection.find(shaped).sort([sort]).limit(skip + limit):
                    merged.setdefault(_hashable(entry["_id"]), entry)
        self._bounded(run, timeout_s)
        rows = sorted(merged.values(), key=lambda e: sort_key(field_value(e, sort[0])), reverse=sort[1] < 0)
        return rows[skip:skip + limit], complete

    def _window_bound(self, query: dict, sort: tuple[str, int], window: int) -> dict | None:
        """``{field: {$gte|$lte: v}}`` where v is the sort value of the ``window``-th entry, or None if fewer.

        Entries without a value in the sort column are left out of a cut
        window (matching them too would need ``$or``).
        """
        field, direction = sort
        beyond = list(self.collection.find(self._shape(query, field, window)).sort([sort]).skip(window - 1).limit(1))
        value = field_value(beyond[0], field) if beyond else None
        if value is None or field in query:
            return None
        return {field: {"$gte" if direction < 0 else "$lte": value}}

    def count(self, query: dict, *, cap: int = 10_000, timeout_s: float = QUERY_BUDGET_S) -> int:
        """How many entries match ``query``, counting no further than ``cap + 1`` (more means "over cap").

        An aggregation with ``$count``: ``count_documents`` takes 36 s on the
        embedded server for 1,000,000 entries.
        """
        pipeline = [{"$match": self._shape(query, None, cap)}, {"$limit": cap + 1}, {"$count": "n"}]
        rows = self._bounded(lambda: list(self.collection.aggregate(pipeline)), timeout_s)
        return int(rows[0]["n"]) if rows else 0

    def estimated_count(self, max_age_s: float = ESTIMATE_MAX_AGE_S) -> int:
        """The collection's size from its metadata (cached for ``max_age_s``): for "≈ N entries"."""
        return self.store.queues.cached(("estimate", self.name), max_age_s,
                                        lambda: self.store.retry(self.collection.estimated_document_count))

    def size(self, exact_below: int = EXACT_SIZE_BELOW) -> tuple[int, bool]:
        """How many entries the queue holds, and whether that is exact: for the UI's "30" or "≈ 2,000,000".

        A queue whose estimate is at most ``exact_below`` is counted (capped, so a queue
        that grew meanwhile costs no more); a bigger one, or a count over its time
        budget, gives the estimate.
        """
        estimate = self.estimated_count()
        if estimate > exact_below:
            return estimate, False
        try:
            counted = self.store.queues.cached(("exact", self.name), EXACT_SIZE_MAX_AGE_S,
                                               lambda: self.count({}, cap=exact_below))
        except QueueQueryTimeout:
            return estimate, False
        return (counted, True) if counted <= exact_below else (max(estimate, counted), False)

    def indexed_fields(self, max_age_s: float = 5.0) -> set[str]:
        """Fields with a single-field index (sorts are fast only on those on the embedded server)."""
        def compute() -> set[str]:
            indexes = self.store.retry(lambda: list(self.collection.list_indexes()))
            return {next(iter(index["key"])) for index in indexes if len(index["key"]) == 1}
        return self.store.queues.cached(("indexes", self.name), max_age_s, compute)

    def ensure_sort_index(self, field: str, *, max_data_indexes: int = MAX_DATA_INDEXES) -> str:
        """Make sorting by ``field`` fast: returns "indexed" (already was), "created", "limit" or "unindexable".

        Only flat ``data.<key>`` fields get new indexes, at most
        ``max_data_indexes`` per queue, because every index slows down writes.
        "unindexable": the database refused an index on the field's name (the
        embedded server names indexes after fields and allows only letters,
        digits and '_' in them, so a key with '-' or a space has none); the
        sort still works, without an index. That answer is remembered for
        ``UNINDEXABLE_MAX_AGE_S``.
        """
        from sooner.store.queue_filters import is_field

        indexed = self.indexed_fields()
        if field in indexed:
            return "indexed"
        if field in ("status", "createdAt", "updatedAt"):
            self._indexed = False
            self._ensure_indexes()
        elif not (field.startswith("data.") and is_field(field)):
            raise ValueError(f"not an indexable queue field: {field!r}")
        elif sum(1 for name in indexed if name.startswith("data.")) >= max_data_indexes:
            return "limit"
        elif self.store.queues.peek(("unindexable", self.name, field), UNINDEXABLE_MAX_AGE_S):
            return "unindexable"
        else:
            try:
                self.store.retry(lambda: self.collection.create_index([(field, pymongo.ASCENDING)]))
            except OperationFailure as exc:
                logger.info("queue %s: no index on %s (the database refused it: %s)", self.name, field, exc)
                self.store.queues.remember(("unindexable", self.name, field), True)
                return "unindexable"
        self.store.queues.forget(("indexes", self.name))
        return "created"

    def set_status_many(self, ids: Iterable[Any], status: str) -> int:
        """Set ``status`` and ``updatedAt`` of the entries with these exact ids; returns how many matched."""
        targets = list(ids)
        result = self.store.retry(lambda: self.collection.update_many(
            {"_id": {"$in": targets}}, {"$set": {"status": status, "updatedAt": self.store.clock.now()}}))
        return result.matched_count

    def requeue_many(self, ids: Iterable[Any]) -> int:
        """Put the entries back to "pending" (the status workers claim from)."""
        return self.set_status_many(ids, "pending")

    def delete_many(self, ids: Iterable[Any]) -> int:
        """Delete the entries with these exact ids; returns how many were deleted."""
        targets = list(ids)
        return self.store.retry(lambda: self.collection.delete_many({"_id": {"$in": targets}})).deleted_count

    def _bounded(self, operation: Callable[[], T], timeout_s: float) -> T:
        def attempt() -> T:
            try:
                with pymongo.timeout(timeout_s):
                    return operation()
            except PyMongoError as exc:
                if exc.timeout and not isinstance(exc, ServerSelectionTimeoutError):
                    raise QueueQueryTimeout(self.name, timeout_s) from None
                raise
        return self.store.retry(attempt)

    def _shape(self, query: dict, sort_field: str | None, rows: int) -> dict:
        if self.store.embedded is None:
            return query
        return _shape_for_embedded(self, query, sort_field, rows)


def _shape_for_embedded(queue: Queue, query: dict, sort_field: str | None, rows: int) -> dict:
    """Rewrite ``query`` into forms nx-27017 answers in SQL with a good index.

    Dates become the JSON text the server stores (``{"$date":"…"}``), which
    compares in SQL like the dates; its Python date path reads every match.
    SQLite uses an index for ``field = v`` but walks the sort key's index for
    ``field IN (v)``: the first is right for rare values, the second for
    common ones (a 25 % status with a sort: 742 ms vs 4 ms on 1,000,000
    entries; a missing one: 2 ms vs 2.9 s). A capped probe on the field's
    index tells which; the break-even is about sqrt(rows × size) matches.
    """
    shaped = {name: _embedded_dates(condition) for name, condition in query.items()}
    indexed: set[str] | None = None
    for name, condition in shaped.items():
        values = condition.get("$in") if isinstance(condition, dict) and len(condition) == 1 else None
        if not values or len(values) != 1 or name == sort_field:
            continue
        indexed = queue.indexed_fields() if indexed is None else indexed
        if name not in indexed:
            continue
        if sort_field is None or sort_field not in indexed or not _common(queue, name, values[0], rows):
            shaped[name] = values[0]
    return shaped


def _common(queue: Queue, name: str, value: Any, rows: int) -> bool:
    cap = max(1, int(math.sqrt(max(rows, 1) * max(queue.estimated_count(), 1))))
    probe = queue.store.retry(lambda: list(queue.collection.find({name: value}).skip(cap - 1).limit(1)))
    return bool(probe)


def _embedded_dates(value: Any) -> Any:
    if isinstance(value, datetime):
        moment = value.astimezone(timezone.utc).replace(tzinfo=None) if value.tzinfo else value
        return '{"$date":"%s"}' % moment.isoformat()
    if isinstance(value, dict):
        return {key: _embedded_dates(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_embedded_dates(item) for item in value]
    return value


def _both(query: dict, branch: dict) -> dict:
    """``query`` AND ``branch`` as one document, with ``$and`` only where the same operator meets twice."""
    combined = dict(query)
    for name, condition in branch.items():
        if name not in combined:
            combined[name] = condition
        elif isinstance(condition, dict) and isinstance(combined[name], dict) \
                and not set(condition) & set(combined[name]):
            combined[name] = {**combined[name], **condition}
        else:
            return {"$and": [query, branch]}
    return combined


def field_value(entry: dict, name: str) -> Any:
    """The value of ``status``, ``createdAt`` … or ``data.<key>`` in an entry (None when missing)."""
    if not name.startswith("data."):
        return entry.get(name)
    data = entry.get("data")
    return data.get(name[5:]) if isinstance(data, dict) else None


_TYPE_ORDER = ((type(None), 0), (bool, 7), ((int, float), 1), (str, 2), (dict, 3), (list, 4), (bytes, 5),
               (ObjectId, 6), (datetime, 8))


def sort_key(value: Any) -> tuple:
    """A Python key that orders values as MongoDB sorts them (type first, then value)."""
    for kind, rank in _TYPE_ORDER:
        if isinstance(value, kind):
            if isinstance(value, datetime) and value.tzinfo is None:
                value = value.replace(tzinfo=timezone.utc)
            if isinstance(value, (dict, list)):
                value = repr(value)
            return (rank, value)
    return (9, repr(value))


def _hashable(value: Any) -> Any:
    return repr(value) if isinstance(value, (dict, list)) else value


class QueueRepo:
    """Access to queue collections by name."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._cache: dict[Any, tuple[float, Any]] = {}

    def cached(self, key: Any, max_age_s: float, compute: Callable[[], T]) -> T:
        """``compute()``, remembered for ``max_age_s`` under ``key`` (estimates and counts for the web UI)."""
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and now - hit[0] < max_age_s:
            return hit[1]
        value = compute()
        if len(self._cache) > 1000:
            self._cache.clear()
        self._cache[key] = (now, value)
        return value

    def remember(self, key: Any, value: Any) -> None:
        """Keep ``value`` under ``key`` from now on, as :meth:`cached` would have."""
        if len(self._cache) > 1000:
            self._cache.clear()
        self._cache[key] = (time.monotonic(), value)

    def forget(self, key: Any) -> None:
        self._cache.pop(key, None)

    def peek(self, key: Any, max_age_s: float) -> Any:
        """What :meth:`cached` holds under ``key`` if younger than ``max_age_s``, else None."""
        hit = self._cache.get(key)
        return hit[1] if hit is not None and time.monotonic() - hit[0] < max_age_s else None

    def __call__(self, name: str) -> Queue:
        return Queue(self.store, name)

    def names(self) -> list[str]:
        """Names of existing queues."""
        prefix = schema.QUEUE_PREFIX
        names = self.store.collection_names()
        return sorted(n[len(prefix):] for n in names if n.startswith(prefix))
