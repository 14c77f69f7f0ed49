"""A run's output on its way to ``run_output``: batched, coalesced, bounded.

Text is added per stream; consecutive text of one stream joins the same chunk
(up to :data:`~sooner.store.output.MAX_CHUNK_CHARS`). Batches are numbered
(consecutive ``seq`` from 0) and appended in one insert each, strictly in
order. The run's loop calls :meth:`OutputWriter.flush` when :meth:`due` says
so. When the buffer reaches ``max_buffer_chars``, :meth:`write` hands the
batch to a background thread, so reading the script's pipes overlaps with the
database write; if the previous batch is still being written, :meth:`write`
blocks. At most two batches exist, so a script faster than the database waits
on a full pipe instead of growing the worker's memory. While the database is
unreachable, batches go to the run's outage journal instead
(:mod:`sooner.worker.journal`), keeping their numbers.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime
from typing import TYPE_CHECKING, Callable

from sooner.clock import utcnow
from sooner.errors import StoreUnreachable
from sooner.metrics import PROCESS
from sooner.store.output import MAX_CHUNK_CHARS

if TYPE_CHECKING:
    from sooner.store import Store
    from sooner.worker.journal import RunJournal, StoreLink

logger = logging.getLogger(__name__)

MAX_BUFFER_CHARS = 256 * 1024

Batch = list[tuple[int, str, str, datetime]]


class OutputWriter:
    """Buffer and number one run's output chunks; safe to use from several threads."""

    def __init__(self, store: Store, run_id: str, *, flush_s: float, max_buffer_chars: int = MAX_BUFFER_CHARS,
                 clock: Callable[[], datetime] = utcnow, journal: RunJournal | None = None,
                 link: StoreLink | None = None) -> None:
        self.store = store
        # With a journal, batches the database cannot take (it is unreachable) go there instead, and so
        # does every batch after them until the journal is replayed (see sooner.worker.journal).
        self.journal = journal
        self.link = link
        self.run_id = run_id
        self.flush_s = flush_s
        self.max_buffer_chars = max_buffer_chars
        self.clock = clock
        self.next_seq = 0
        self.chars_written = 0
        # Pending chunks: [stream, parts, size, t]; parts are joined when the batch is taken.
        self._pending: list[list] = []
        self._size = 0
        self._first_at: float | None = None
        self._handed: Batch | None = None  # a full batch waiting for the background thread
        self._writing = False  # a batch is being inserted (by either thread)
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self._cond = threading.Condition()

    def write(self, stream: str, text: str) -> None:
        """Add text of ``stream`` (stdout, stderr or system); blocks while the database is behind."""
        if not text:
            return
        with self._cond:
            for start in range(0, len(text), MAX_CHUNK_CHARS):
                self._add(stream, text[start:start + MAX_CHUNK_CHARS])
            if self._size >= self.max_buffer_chars:
                self._hand_off()

    def system(self, line: str) -> None:
        """Add one line from Sooner itself (``sooner: …``)."""
        self.write("system", line if line.endswith("\n") else line + "\n")

    def due(self) -> float | None:
        """The monotonic time by which buffered text should be flushed, or None when empty."""
        first = self._first_at
        return None if first is None else first + self.flush_s

    def flush(self) -> None:
        """Write everything buffered so far; returns once it is stored (raises StoreError if it cannot be)."""
        with self._cond:
            self._wait_idle()
            batch = self._take()
            if not batch:
                return
            self._writing = True
        try:
            self._store(batch)
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()

    def _store(self, batch: Batch) -> None:
        """Insert one batch, or journal it while the database is unreachable (or the journal holds anything)."""
        journal, link = self.journal, self.link
        if journal is not None and (journal.active or (link is not None and link.down)):
            journal.output(batch)
            return
        try:
            self.store.output.append(self.run_id, batch)
            PROCESS.output_bytes.inc(sum(len(text.encode("utf-8", "surrogatepass")) for _, _, text, _ in batch))
        except StoreUnreachable as exc:
            if journal is None:
                raise
            if link is not None:
                link.failed(exc)
            journal.output(batch)

    def release(self) -> None:
        """Let the background thread end once idle (call after the last :meth:`flush`)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    # -- internals (called with the condition held) --------------------------
    def _add(self, stream: str, text: str) -> None:
        last = self._pending[-1] if self._pending else None
        if last is not None and last[0] == stream and last[2] + len(text) <= MAX_CHUNK_CHARS:
            last[1].append(text)
            last[2] += len(text)
        else:
            self._pending.append([stream, [text], len(text), self.clock()])
        self._size += len(text)
        if self._first_at is None:
            self._first_at = time.monotonic()

    def _take(self) -> Batch:
        pending, self._pending, self._size, self._first_at = self._pending, [], 0, None
        batch = []
        for stream, parts, size, t in pending:
            batch.append((self.next_seq, stream, "".join(parts), t))
            self.next_seq += 1
            self.chars_written += size
        return batch

    def _wait_idle(self) -> None:
        while self._handed is not None or self._writing:
            self._cond.wait()
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _hand_off(self) -> None:
        self._wait_idle()
        self._handed = self._take()
        if self._thread is None:
            self._thread = threading.Thread(target=self._background, name=f"sooner-output-{self.run_id[-6:]}",
                                            daemon=True)
            self._thread.start()
        self._cond.notify_all()

    def _background(self) -> None:
        while True:
            with self._cond:
                while self._handed is None and not self._closed:
                    self._cond.wait()
                if self._handed is None:
                    return
                batch, self._handed = self._handed, None
                self._writing = True
            try:
                self._store(batch)
            except BaseException as exc:  # reported to the run's thread at its next write or flush
                logger.warning("run %s: could not store output: %s", self.run_id, exc)
                with self._cond:
                    self._error = exc
            finally:
                with self._cond:
                    self._writing = False
                    self._cond.notify_all()
