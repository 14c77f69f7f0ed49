"""Webhook hooks (``hooks``) and their delivery log (``hook_deliveries``).

A hook's secret is stored as given: verifying an HMAC needs it (it is a
secret at rest in the database, as the README says). The delivery log is one
document per attempt, newest kept per hook (:data:`LOG_KEEP`). An accepted
delivery's document has the ``_id`` ``<hook>/<delivery id>``: inserting it is
the claim, so two identical deliveries racing in any number of web processes
make one run (the unique ``_id``); the run's id is chosen before the claim and
written into it, so the loser names that run at once.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any, Iterable

from pymongo import DESCENDING, ReturnDocument
from pymongo.errors import DuplicateKeyError

from sooner.errors import SoonerError
from sooner.model.webhook import Hook, InvalidHook, make_hook, validate_hook_name
from sooner.store import schema

if TYPE_CHECKING:
    from sooner.store import Store

LOG_KEEP = 200  # delivery documents kept per hook (a duplicate older than that is not recognised)

# Delivery states (what the log shows); they are the log's words, not run statuses.
CLAIMED = "claimed"  # accepted, its run being inserted
ACCEPTED = "accepted"  # its run is stored
IGNORED = "ignored"  # verified, but the hook's events/branches do not match
REFUSED = "refused"  # bad signature or input


class HookExists(SoonerError):
    """A hook of that name exists already."""


class HookRepo:
    """Domain operations on ``hooks``: ``_id`` (name), ``provider``, ``job``, ``secret``, ``events``, ``branches``,
    ``created_at``, ``created_by``."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.collection = store.collection(schema.HOOKS)

    def add(self, hook: Hook) -> Hook:
        """Store a new hook; raises :class:`HookExists` when its name is taken."""
        document = hook.to_doc()
        try:
            self.store.retry(lambda: self.collection.insert_one(document))
        except DuplicateKeyError:
            raise HookExists(f"a hook named {hook.name!r} exists already (`sooner hook remove {hook.name}` first)") \
                from None
        return hook

    def create(self, provider: str, name: str, job: str, *, secret: str | None = None, events: Iterable[str] = (),
               branches: Iterable[str] = (), by: str | None = None) -> Hook:
        """Validate and store a new hook for the existing job ``job`` (the CLI's ``sooner hook add`` and the web's).

        Raises :class:`InvalidHook` (name, provider, events, branches, secret; a removed job), ``JobNotFound``
        or :class:`HookExists`. Without ``secret`` a random one is made: the returned hook carries it.
        """
        validate_hook_name(name)  # before the job, so the message names what is wrong
        found = self.store.jobs.get(job)
        if found.deleted:
            raise InvalidHook(f"job {found.name!r} was removed from the repository")
        return self.add(make_hook(provider, name, found.name, secret=secret, events=tuple(events),
                                  branches=tuple(branches), now=self.store.clock.now(), by=by))

    def get(self, name: str) -> Hook | None:
        """The hook named ``name`` (a plain string, never a query), or None."""
        if not isinstance(name, str):
            return None
        document = self.store.retry(lambda: self.collection.find_one({"_id": name}))
        return Hook.from_doc(document) if document else None

    def all(self) -> list[Hook]:
        """Every hook, by name."""
        return [Hook.from_doc(doc) for doc in self.store.retry(lambda: list(self.collection.find().sort("_id", 1)))]

    def remove(self, name: str) -> bool:
        """Delete the hook and its delivery log; False when there was none."""
        result = self.store.retry(lambda: self.collection.delete_one({"_id": name}))
        self.store.retry(lambda: self.store.collection(schema.HOOK_DELIVERIES).delete_many({"hook": name}))
        return bool(result.deleted_count)


class DeliveryRepo:
    """The delivery log: ``hook``, ``delivery`` (the sender's id), ``state``, ``status`` (the HTTP answer),
    ``reason``, ``event``, ``run``, ``t``, ``address``."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.collection = store.collection(schema.HOOK_DELIVERIES)

    def claim(self, hook: str, delivery: str, run_id: str, *, now: datetime | None = None,
              **fields: Any) -> dict | None:
        """Take ``delivery`` of ``hook`` for the run ``run_id``: None when taken now, else the earlier claim."""
        now = now or self.store.clock.now()
        document = {"_id": f"{hook}/{delivery}", "hook": hook, "delivery": delivery, "state": CLAIMED,
                    "status": 202, "run": run_id, "t": now, **fields}
        try:
            self.store.retry(lambda: self.collection.insert_one(document))
        except DuplicateKeyError:
            return self.store.retry(lambda: self.collection.find_one({"_id": document["_id"]}))
        self._prune(hook)
        return None

    def mark_accepted(self, hook: str, delivery: str) -> dict | None:
        """The claim's run is stored: state ``accepted``."""
        return self.store.retry(lambda: self.collection.find_one_and_update(
            {"_id": f"{hook}/{delivery}"}, {"$set": {"state": ACCEPTED}}, return_document=ReturnDocument.AFTER))

    def note_duplicate(self, hook: str, delivery: str, *, now: datetime | None = None) -> None:
        """Count another arrival of an accepted delivery (``duplicates``, ``last_duplicate_at``)."""
        now = now or self.store.clock.now()
        self.store.retry(lambda: self.collection.update_one(
            {"_id": f"{hook}/{delivery}"}, {"$inc": {"duplicates": 1}, "$set": {"last_duplicate_at": now}}))

    def record(self, hook: str, state: str, status: int, reason: str, *, now: datetime | None = None,
               **fields: Any) -> None:
        """Log an attempt that started no run (refused or ignored)."""
        now = now or self.store.clock.now()
        document = {"_id": uuid.uuid4().hex, "hook": hook, "state": state, "status": status, "reason": reason[:500],
                    "t": now, **fields}
        self.store.retry(lambda: self.collection.insert_one(document))
        self._prune(hook)

    def log(self, hook: str, limit: int = 50) -> list[dict]:
        """The hook's newest delivery documents, newest first."""
        return self.store.retry(lambda: list(
            self.collection.find({"hook": hook}).sort("t", DESCENDING).limit(max(1, min(limit, LOG_KEEP)))))

    def _prune(self, hook: str) -> None:
        old = self.store.retry(lambda: [doc["_id"] for doc in self.collection.find(
            {"hook": hook}, {"_id": 1}).sort("t", DESCENDING).skip(LOG_KEEP).limit(1000)])
        if old:
            self.store.retry(lambda: self.collection.delete_many({"_id": {"$in": old}}))
