"""Group commit: like writes from a process's threads, sent as one command while another is in flight.

A worker runs each run on its own thread, and at capacity several of them
store their output, their start or their outcome event at nearly the same
moment. Each such write costs a round trip whose price (the server's work per
command and the driver's) barely grows with the number of documents it
carries: on the embedded server, one ``insert_many`` of 4 documents costs
0.33 ms of server CPU per document against 0.62 for ``insert_one``, and the
driver's CPU falls from 0.52 to 0.20 ms per document (measured).

:class:`GroupCommit` combines them without adding a wait: a write that finds
none in flight is sent at once, alone; writes that arrive while one is in
flight queue, and when it returns the first of them sends all that queued, in
one command. Each caller gets its own answer (or the error of the command
that carried its write) and returns only once its write is stored.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Answer = TypeVar("Answer")


class _Slot(Generic[Item, Answer]):
    __slots__ = ("item", "answer", "error", "done")

    def __init__(self, item: Item) -> None:
        self.item = item
        self.answer: Answer | None = None
        self.error: BaseException | None = None
        self.done = False


class GroupCommit(Generic[Item, Answer]):
    """Sends writes through ``write(items) -> answers`` (one answer per item, in order), grouped as above."""

    def __init__(self, write: Callable[[list[Item]], Sequence[Answer]]) -> None:
        self._write = write
        self._cond = threading.Condition()
        self._pending: list[_Slot[Item, Answer]] = []
        self._busy = False
        self.commands = 0  # how many commands carried the writes (for tests and benchmarks)

    @property
    def queued(self) -> int:
        """How many writes wait for the command in flight to return."""
        with self._cond:
            return len(self._pending)

    def submit(self, item: Item) -> Answer:
        """Store ``item`` (alone, or with the writes queued beside it); its answer, or the command's error."""
        slot: _Slot[Item, Answer] = _Slot(item)
        batch: list[_Slot[Item, Answer]] = []
        with self._cond:
            self._pending.append(slot)
            while self._busy and not slot.done:
                self._cond.wait()
            if not slot.done:  # nothing in flight: this caller sends what queued, its own write among it
                self._busy = True
                batch, self._pending = self._pending, []
        if batch:
            self._send(batch)
        if slot.error is not None:
            raise slot.error
        return slot.answer  # type: ignore[return-value]

    def _send(self, batch: list[_Slot[Item, Answer]]) -> None:
        try:
            answers = self._write([queued.item for queued in batch])
            if len(answers) != len(batch):
                raise RuntimeError(f"group commit: {len(answers)} answers for {len(batch)} writes")
            for queued, answer in zip(batch, answers):
                queued.answer = answer
        except BaseException as exc:
            for queued in batch:
                queued.error = exc
        finally:
            with self._cond:
                self.commands += 1
                for queued in batch:
                    queued.done = True
                self._busy = False
                self._cond.notify_all()
