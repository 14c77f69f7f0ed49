"""A run's outage journal: what the database could not take yet, on disk, in order, replayed when it is back.

While the database is unreachable (:class:`~sooner.errors.StoreUnreachable`)
a worker keeps its scripts running for up to ``outage_grace_s``. Everything
a run would have written -- output chunks (with the sequence numbers the
output writer gave them), progress values, emitted events (with the event
id chosen when the script emitted) and finally how the run ended -- is
appended to one journal file per run instead, as JSON lines. Once the
journal holds anything, every later record of that run goes to it too, so
the order is the order things happened; :meth:`RunJournal.replay` writes the
records to the store in that order when the database answers again.

Replaying is idempotent, so a journal replayed twice (its worker was killed
mid-replay, and its successor replays the file it left) stores nothing
twice: an output chunk whose ``seq`` is stored already is skipped, an event
whose id exists is not recorded again, and a run that has ended already is
not ended again.

A journal is bounded (``outage_journal_mb``): when it is full the run's
output is no longer read (:attr:`RunJournal.full`), so the script waits on
its full pipe -- as it would on a slow database -- and nothing is dropped.

:class:`StoreLink` is what one worker knows of its database: up, or down
since when. The first failure starts a probe thread that pings until the
database answers; then every run is told (``on_up`` callbacks) and drains
its journal.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bson import ObjectId

from sooner.errors import SoonerError, StoreUnreachable
from sooner.model import RunStatus
from sooner.model.run import RunUsage

if TYPE_CHECKING:
    from sooner.runs.service import RunService
    from sooner.store import Store

logger = logging.getLogger(__name__)

PROBE_S = 1.0
"""How often a link that is down pings the database."""
READ_BLOCK = 256 * 1024
REPLAY_BATCH = 64
"""Records one :meth:`RunJournal.replay` step writes, so the run's loop keeps reading the script between steps."""

OUTPUT, PROGRESS, EMIT, END = "output", "progress", "emit", "end"


class StoreLink:
    """Whether this worker's database answers: ``failed()`` on an outage, ``answered()`` once it is back.

    After a failure a daemon thread pings the store every ``probe_s`` until it
    answers (the worker's heartbeat may report it first). Callbacks given to
    :meth:`on_up` run (on that thread) each time the link comes back.
    """

    def __init__(self, store: Store, *, probe_s: float = PROBE_S) -> None:
        self.store = store
        self.probe_s = probe_s
        self._down_since: float | None = None
        self._callbacks: dict[int, Callable[[], None]] = {}
        self._lock = threading.Lock()
        self._prober: threading.Thread | None = None
        self.outages = 0

    @property
    def down(self) -> bool:
        return self._down_since is not None

    def down_for(self) -> float:
        """Seconds since the outage began (0 while up)."""
        since = self._down_since
        return 0.0 if since is None else time.monotonic() - since

    def failed(self, reason: BaseException | str = "") -> None:
        """The database did not answer: mark the link down and start probing it."""
        with self._lock:
            if self._down_since is not None:
                return
            self._down_since = time.monotonic()
            self.outages += 1
            if self._prober is None or not self._prober.is_alive():
                self._prober = threading.Thread(target=self._probe, name="sooner-store-probe", daemon=True)
                self._prober.start()
        logger.warning("database unreachable; keeping runs going and journaling their output: %s", reason)

    def answered(self) -> None:
        """The database answered: mark the link up and tell every run."""
        with self._lock:
            if self._down_since is None:
                return
            outage = time.monotonic() - self._down_since
            self._down_since = None
            callbacks = list(self._callbacks.values())
        logger.warning("database reachable again after %.1fs; replaying journals", outage)
        for callback in callbacks:
            try:
                callback()
            except Exception:
                logger.exception("a callback for the database's return failed")

    def on_up(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` whenever the link comes back; returns a function that removes it."""
        key = id(callback)
        with self._lock:
            self._callbacks[key] = callback

        def forget() -> None:
            with self._lock:
                self._callbacks.pop(key, None)
        return forget

    def _probe(self) -> None:
        while self.down:
            time.sleep(self.probe_s)  # a probe's pace, not a synchronisation: the ping decides
            try:
                self.store.ping()
            except Exception as exc:
                logger.debug("database still unreachable: %s", exc)
                continue
            self.answered()


class JournalFull(SoonerError):
    """The run's journal reached its bound; the run's output waits until it drains."""


class RunJournal:
    """The on-disk journal of one run (``<dir>/<run id>.jsonl``); thread-safe. See the module docstring."""

    def __init__(self, directory: Path, run_id: str, *, max_bytes: int) -> None:
        self.path = Path(directory) / f"{run_id}.jsonl"
        self.run_id = run_id
        self.max_bytes = max_bytes
        self._lock = threading.RLock()
        self._pending = 0  # records appended and not replayed yet
        self._size = 0  # bytes of the file
        self._read_at = 0  # offset of the first record not replayed yet
        self._file: Any = None
        self.records_journaled = 0
        self.had_outage = False

    # -- writing ------------------------------------------------------------
    @property
    def active(self) -> bool:
        """Records wait to be replayed: whatever the run writes next goes here too, to keep the order."""
        return self._pending > 0

    @property
    def full(self) -> bool:
        return self._size - self._read_at >= self.max_bytes

    def output(self, batch: list[tuple[int, str, str, datetime]]) -> None:
        for seq, stream, text, t in batch:
            self._append({"k": OUTPUT, "seq": seq, "stream": stream, "text": text, "t": _epoch(t)})

    def progress(self, current: float, maximum: float) -> None:
        self._append({"k": PROGRESS, "current": current, "max": maximum})

    def emit(self, name: str, data: Any, *, source: dict[str, Any], depth: int, t: datetime,
             event_id: str | None = None) -> str:
        """Journal an event; returns the id it will have once stored."""
        event_id = event_id or str(ObjectId())
        self._append({"k": EMIT, "id": event_id, "name": name, "data": data, "source": source, "depth": depth,
                      "t": _epoch(t)})
        return event_id

    def end(self, status: RunStatus, *, exit_code: int | None, note: str | None, started_at: datetime | None,
            process_gone: bool, usage: RunUsage | None = None, start: dict[str, Any] | None = None) -> None:
        """Journal the run's end; ``start``: its start record when that was not stored either (its
        ``started_at`` is the record's own)."""
        self._append({"k": END, "status": status.value, "exit_code": exit_code, "note": note,
                      "started_at": _epoch(started_at), "process_gone": process_gone,
                      "usage": usage.fields() if usage is not None else None,
                      "start": {k: v for k, v in start.items() if k != "started_at"} if start else None})

    def _append(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, default=str, ensure_ascii=False) + "\n").encode()
        with self._lock:
            if self._file is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
                self._file = os.fdopen(fd, "r+b", buffering=0)
                self._size = self._file.seek(0, os.SEEK_END)
            self._file.write(line)
            self._size += len(line)
            self._pending += 1
            self.records_journaled += 1
            self.had_outage = True

    # -- replaying ------------------------------------------------------------
    def replay(self, service: RunService, *, limit: int | None = REPLAY_BATCH) -> bool:
        """Write up to ``limit`` waiting records to the store, in order; True once none waits.

        Raises StoreUnreachable if the database went away again (what was
        written stays written; the rest waits for the next try).
        """
        with self._lock:
            if self._file is None or not self._pending:
                return True
            lines = self._read_lines(limit or self._pending)
        done = 0
        try:
            for record in _parse(lines, self.path):
                apply_safely(service, self.run_id, record)
                done += 1
        finally:
            with self._lock:
                self._read_at += sum(len(line) for line in lines[:done])
                self._pending -= done
                if not self._pending:
                    self._file.truncate(0)  # O_APPEND: the next record starts the file again
                    self._size = self._read_at = 0
        return not self._pending

    def _read_lines(self, most: int) -> list[bytes]:
        """Up to ``most`` whole records from the first one not replayed (called with the lock held)."""
        lines: list[bytes] = []
        offset, tail = self._read_at, b""
        while len(lines) < most and offset < self._size:
            block = os.pread(self._file.fileno(), READ_BLOCK, offset)
            if not block:
                break
            offset += len(block)
            *whole, tail = (tail + block).split(b"\n")
            lines += [line + b"\n" for line in whole]
        if len(lines) < most and tail:
            lines.append(tail)  # cut short (its writer was killed): _parse stops there
        return lines[:most]

    def close(self, *, remove: bool) -> None:
        """Close the file; remove it (``remove``) once everything in it is stored."""
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
            if remove and not self._pending:
                self.path.unlink(missing_ok=True)


def apply_record(service: RunService, run_id: str, record: dict[str, Any]) -> None:
    """Store one journal record (idempotently, see the module docstring)."""
    store, kind = service.store, record.get("k")
    if kind == OUTPUT:
        store.output.append(run_id, [(record["seq"], record["stream"], record["text"], _datetime(record["t"]))])
    elif kind == PROGRESS:
        store.runs.set_progress(run_id, record["current"], record["max"])
    elif kind == EMIT:
        service.emit(record["name"], record.get("data"), source=record["source"], depth=record["depth"],
                     now=_datetime(record["t"]), event_id=record["id"])
    elif kind == END:
        if record.get("process_gone"):
            store.runs.mark_process_gone(run_id)
        started_at = _datetime(record.get("started_at"))
        start = record.get("start")
        service.finish(run_id, RunStatus(record["status"]), exit_code=record.get("exit_code"), note=record.get("note"),
                       started_at=started_at, usage=RunUsage.from_doc(record.get("usage")),
                       start={**start, "started_at": started_at} if start else None)
    else:
        logger.warning("run %s: skipping an unknown journal record %r", run_id, kind)


def apply_safely(service: RunService, run_id: str, record: dict[str, Any]) -> None:
    """:func:`apply_record`, except that a record the store refuses is logged and skipped.

    Only an outage (StoreUnreachable) stops a replay: waiting fixes that, while a
    refused record would block every record behind it for ever.
    """
    try:
        apply_record(service, run_id, record)
    except StoreUnreachable:
        raise
    except Exception:
        logger.exception("run %s: a journaled %s record could not be stored; skipped", run_id, record.get("k"))


def replay_left_journals(directory: Path, service: RunService) -> list[str]:
    """Replay journals a previous worker process left in ``directory`` (it died before the database came back).

    Returns the ids of runs whose journals were replayed whole (and removed).
    A journal that cannot be read stays for the next start; StoreUnreachable
    (the database went away again) stops the replay, leaving the rest.
    """
    replayed = []
    for path in sorted(Path(directory).glob("*.jsonl")) if Path(directory).is_dir() else []:
        run_id = path.stem
        try:
            with open(path, "rb") as file:
                records = list(_parse(file.readlines(), path))
        except (OSError, ValueError):
            logger.exception("run %s: its journal %s could not be read; kept", run_id, path)
            continue
        for record in records:
            apply_safely(service, run_id, record)
        path.unlink(missing_ok=True)
        replayed.append(run_id)
        logger.warning("run %s: replayed the journal its previous worker left", run_id)
    return replayed


def _parse(lines: list[bytes], path: Path) -> Iterator[dict[str, Any]]:
    for line in lines:
        if not line.endswith(b"\n"):
            logger.warning("%s: ignoring a record cut short (its writer was killed while writing it)", path)
            return
        yield json.loads(line)


def _epoch(moment: datetime | None) -> float | None:
    return None if moment is None else moment.timestamp()


def _datetime(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, timezone.utc)
