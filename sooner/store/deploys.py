"""The ``deploys`` history and the git objects (``blobs``/``trees``) workers need."""

from __future__ import annotations

import builtins
from datetime import datetime
from typing import TYPE_CHECKING, Iterable

from bson.binary import Binary

from sooner.store import schema
from sooner.store.bulk import insert_all

if TYPE_CHECKING:
    from sooner.store import Store

# Blob documents are sent in batches of about this many bytes: big enough to
# be fast, well under MongoDB's 48 MB message limit.
_BATCH_BYTES = 8 * 1024 * 1024


class DeployRepo:
    """Domain operations on ``deploys``."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.collection = store.collection(schema.DEPLOYS)

    def record(self, *, commit: str, tree: str, branch: str, author: str, message: str,
               created: builtins.list[str], updated: builtins.list[str], removed: builtins.list[str],
               restored: builtins.list[str],
               now: datetime | None = None) -> dict:
        """Insert one deploy entry (the newest is the deployed state)."""
        document = {"commit": commit, "tree": tree, "branch": branch, "author": author, "message": message,
                    "created": created, "updated": updated, "removed": removed, "restored": restored,
                    "time": now or self.store.clock.now()}
        self.store.retry(lambda: self.collection.insert_one(document))
        return document

    def latest(self) -> dict | None:
        """The newest deploy, i.e. what runs use."""
        return self.store.retry(lambda: self.collection.find_one({}, sort=[("time", -1), ("_id", -1)]))

    def by_commit(self, commit: str) -> dict | None:
        """The newest deploy of ``commit`` (workers use its ``tree``), or None."""
        return self.store.retry(lambda: self.collection.find_one({"commit": commit}, sort=[("time", -1), ("_id", -1)]))

    def list(self, limit: int = 50) -> builtins.list[dict]:
        return self.store.retry(lambda: list(self.collection.find({}).sort([("time", -1), ("_id", -1)]).limit(limit)))


class ObjectRepo:
    """Git blobs and trees, content-addressed by sha, so remote workers can rebuild a tree."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.blobs = store.collection(schema.BLOBS)
        self.trees = store.collection(schema.TREES)

    def missing(self, kind: str, shas: Iterable[str]) -> set[str]:
        """Which of the shas are not stored yet (``kind`` is ``blobs`` or ``trees``)."""
        wanted = set(shas)
        collection = self.blobs if kind == "blobs" else self.trees
        present: set[str] = set()
        chunk = list(wanted)
        for start in range(0, len(chunk), 1000):
            part = chunk[start:start + 1000]
            present.update(d["_id"] for d in self.store.retry(
                lambda: list(collection.find({"_id": {"$in": part}}, {"_id": 1}))))
        return wanted - present

    def put_blobs(self, blobs: Iterable[tuple[str, bytes]]) -> int:
        """Store blobs (sha, content); already stored ones are left alone. Returns how many were sent."""
        batch: list[dict] = []
        size = sent = 0
        for sha, data in blobs:
            batch.append({"_id": sha, "data": Binary(data), "size": len(data)})
            size += len(data)
            if size >= _BATCH_BYTES:
                sent += self._insert(self.blobs, batch)
                batch, size = [], 0
        return sent + self._insert(self.blobs, batch)

    def put_trees(self, trees: Iterable[tuple[str, list[dict]]]) -> int:
        """Store trees (sha, entries of {name, mode, sha}). Returns how many were sent."""
        return self._insert(self.trees, [{"_id": sha, "entries": entries} for sha, entries in trees])

    def get_blob(self, sha: str) -> bytes | None:
        doc = self.store.retry(lambda: self.blobs.find_one({"_id": sha}))
        return bytes(doc["data"]) if doc else None

    def get_tree(self, sha: str) -> list[dict] | None:
        doc = self.store.retry(lambda: self.trees.find_one({"_id": sha}))
        return doc["entries"] if doc else None

    def _insert(self, collection, documents: list[dict]) -> int:
        # Duplicates are fine: content-addressed (a concurrent deploy, or a retried batch).
        insert_all(self.store, collection, documents)
        return len(documents)
