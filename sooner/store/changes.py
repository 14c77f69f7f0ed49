"""The change feed: what was inserted or changed in ``runs`` and ``run_output``, as it happens.

MongoDB change streams need a replica set (the embedded nx-27017 server has
one); mongomock and a standalone MongoDB have none. Callers never depend on
the feed for correctness, only for speed: it tells them *what* to read
again, sooner than polling would. So :meth:`Changes.open` answers None where
streams do not work, and :meth:`Changes.follow` reports through
``on_state(False)`` that the caller should poll, then tries again later.

    stop = threading.Event()
    store.changes.follow("run_output", lambda change: wake(change.run_id), stop=stop,
                         on_state=lambda streaming: ...)
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from bson import ObjectId

from sooner.errors import StoreError
from sooner.store import schema

if TYPE_CHECKING:
    from sooner.store import Store

logger = logging.getLogger(__name__)

# What may be followed, by the name callers use.
KINDS = {"runs": schema.RUNS, "run_output": schema.RUN_OUTPUT}
OPERATIONS = ("insert", "update", "replace")
# Where there is no stream, try to open one again this often.
RETRY_S = 30.0
# After an open stream broke, the first try to open one again waits this long (then doubling up to RETRY_S).
REOPEN_FIRST_S = 1.0
# A server that answers an empty getMore at once instead of awaiting new changes (nx-27017 does) is asked
# again after this pause: asking in a loop cost an idle web process ~25 % of a CPU and the database ~40 %.
IDLE_POLL_S = 0.02


@dataclass(frozen=True)
class Change:
    """One inserted, updated or replaced document.

    ``run_id`` is the run it concerns: the run itself for ``runs``, the
    chunk's run for ``run_output`` (None if the stream did not carry it).
    """

    kind: str
    operation: str
    document_id: Any
    run_id: str | None


class ChangeStream:
    """An open change stream on one collection; close it (or use ``with``) when done."""

    def __init__(self, kind: str, stream: Any) -> None:
        self.kind = kind
        self._stream = stream

    def next(self) -> Change | None:
        """The next change, waiting at most the stream's await time; None if nothing happened.

        Raises StoreError when the stream broke (connection lost, server restarted).
        """
        try:
            event = self._stream.try_next()
        except Exception as exc:  # pymongo's errors stay inside the store package
            raise StoreError(f"change stream on {self.kind} ended: {exc}") from None
        return None if event is None else _change(self.kind, event)

    def close(self) -> None:
        try:
            self._stream.close()
        except Exception:  # closing a broken stream may fail too; it is gone either way
            logger.debug("closing the change stream on %s failed", self.kind, exc_info=True)

    def __enter__(self) -> ChangeStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Changes:
    """Change streams on the collections live pages follow (``store.changes``)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def open(self, kind: str, *, max_await_ms: int = 500) -> ChangeStream | None:
        """A change stream of inserts/updates/replaces in ``kind`` (``runs`` or ``run_output``).

        None when the database offers no change streams (mongomock, a
        standalone MongoDB) or could not open one now: poll instead.
        """
        collection = self.store.collection(_collection(kind))
        pipeline = [{"$match": {"operationType": {"$in": list(OPERATIONS)}}}]
        try:
            return ChangeStream(kind, collection.watch(pipeline, max_await_time_ms=max_await_ms))
        except Exception as exc:  # NotImplementedError (mongomock), OperationFailure (standalone), network errors
            logger.debug("no change stream on %s: %s", kind, exc)
            return None

    def follow(self, kind: str, on_change: Callable[[Change], None], *, stop: threading.Event,
               on_state: Callable[[bool], None] | None = None, retry_s: float = RETRY_S,
               max_await_ms: int = 500, idle_poll_s: float = IDLE_POLL_S) -> None:
        """Call ``on_change`` for every change in ``kind`` until ``stop`` is set. Blocks; run it in a thread.

        ``on_state(True)`` is called when a stream is open, ``on_state(False)``
        when there is none or it broke: the caller should poll until the next
        ``True``. Where no stream ever opened, a new one is tried every
        ``retry_s`` seconds; after one broke (an outage, a restarted server)
        sooner, from :data:`REOPEN_FIRST_S` doubling up to ``retry_s``, so
        the feed is back soon after the database. An empty answer that came
        sooner than half the await time is followed by an ``idle_poll_s`` pause.
        """
        opened_once = False
        reopen_s = min(REOPEN_FIRST_S, retry_s)
        while not stop.is_set():
            stream = self.open(kind, max_await_ms=max_await_ms)
            if stream is not None:
                opened_once, reopen_s = True, min(REOPEN_FIRST_S, retry_s)
                if on_state:
                    on_state(True)
                try:
                    with stream:
                        while not stop.is_set():
                            asked = time.monotonic()
                            change = stream.next()
                            if change is not None:
                                _deliver(on_change, change)
                            elif time.monotonic() - asked < max_await_ms / 2000:
                                stop.wait(idle_poll_s)
                    return
                except StoreError as exc:
                    logger.info("live updates: %s; polling", exc)
            if on_state:
                on_state(False)
            if opened_once:
                stop.wait(reopen_s)
                reopen_s = min(reopen_s * 2, retry_s)
            else:
                stop.wait(retry_s)


def _deliver(on_change: Callable[[Change], None], change: Change) -> None:
    try:
        on_change(change)
    except Exception:  # a failing listener must not end the feed for the others
        logger.exception("change listener failed on %s %s", change.kind, change.document_id)


def _collection(kind: str) -> str:
    try:
        return KINDS[kind]
    except KeyError:
        raise ValueError(f"no change feed for {kind!r}: use one of {', '.join(KINDS)}") from None


def _change(kind: str, event: dict[str, Any]) -> Change:
    document_id = (event.get("documentKey") or {}).get("_id")
    if kind == "runs":
        # Run ids are ObjectId hex strings; nx-27017 hands a string key back as an ObjectId.
        document_id = str(document_id) if isinstance(document_id, ObjectId) else document_id
        run_id = document_id
    else:
        run_id = (event.get("fullDocument") or {}).get("run")
    return Change(kind=kind, operation=str(event.get("operationType") or ""), document_id=document_id,
                  run_id=run_id)
