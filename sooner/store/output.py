"""The ``run_output`` collection: a run's output as numbered chunks.

A chunk holds consecutive text of one stream (stdout, stderr or system); the
whole output of a run is its chunks in ``seq`` order. Writers number chunks
themselves (one writer per run: its worker), so readers can ask for
"everything after seq N" and never miss or repeat a line across reconnects.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Iterable

from pymongo.errors import BulkWriteError

from sooner.store import schema

if TYPE_CHECKING:
    from sooner.store import Store

# Keep each chunk document small enough to stream and render in pieces.
MAX_CHUNK_CHARS = 256 * 1024


class OutputRepo:
    """Domain operations on ``run_output``."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.collection = store.collection(schema.RUN_OUTPUT)

    def append(self, run_id: str, chunks: Iterable[tuple[int, str, str, datetime | None]]) -> None:
        """Insert chunks (seq, stream, text, t). A chunk already stored (a retried batch) is skipped."""
        documents = [{"run": run_id, "seq": seq, "stream": stream, "text": text, "t": t or self.store.clock.now()}
                     for seq, stream, text, t in chunks]
        if not documents:
            return

        def insert() -> None:
            try:
                self.collection.insert_many(documents, ordered=False)
            except BulkWriteError as exc:
                if any(e.get("code") != 11000 for e in exc.details.get("writeErrors", [])):
                    raise
        self.store.retry(insert)

    def read(self, run_id: str, *, after_seq: int = -1, limit: int = 0) -> list[dict]:
        """Chunks with seq > after_seq, in order (at most ``limit`` if given)."""
        cursor = self.collection.find({"run": run_id, "seq": {"$gt": after_seq}},
                                      {"_id": 0, "seq": 1, "stream": 1, "text": 1, "t": 1}).sort("seq", 1)
        if limit:
            cursor = cursor.limit(limit)
        return self.store.retry(lambda: list(cursor.clone()))

    def last_seq(self, run_id: str) -> int:
        doc = self.store.retry(lambda: self.collection.find_one({"run": run_id}, sort=[("seq", -1)]))
        return doc["seq"] if doc else -1

    def text(self, run_id: str) -> str:
        """The whole output as one string (for tests and downloads of small runs)."""
        return "".join(chunk["text"] for chunk in self.read(run_id))
