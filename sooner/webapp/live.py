"""Live updates over Socket.IO: run output, progress and status, the dashboard, and the database's state.

Every process talks only to MongoDB, so the web server learns about new
output by reading it. :class:`LiveHub` keeps one room per watched run
(``run:<id>``) and a ``dashboard`` room, and only reads what someone watches:

* ``tick()`` is one step: for each watched run, read chunks after the room's
  ``last_seq`` and the run's status/progress, and emit what changed to the
  room; every ``dashboard_s`` it emits a dashboard snapshot if it changed,
  and in between a ``run`` message to the dashboard room when a run the
  last snapshot showed running changed (its progress bar).
* ``run_forever()`` calls ``tick()`` every ``interval_s`` (50 ms). Where the
  database offers change streams (the embedded server and replica sets do),
  watcher threads following ``store.changes`` wake it as soon as output is
  inserted or a run changes and tell it which runs changed, so a tick reads
  only those (plus a full sweep every ``sweep_s``); where there are no change
  streams (standalone MongoDB, mongomock) every tick sweeps. The watchers
  run only while someone watches (a feed costs the database even when idle).
* A room gets at most one output message per ``min_gap_s`` (40 ms): a chatty
  run is sent in fewer, bigger messages rather than falling behind (the loop
  wakes when the gap ends, not a tick later). A room gets at most one
  ``run`` message (status, progress) per ``status_gap_s`` (100 ms); a
  change inside the gap is sent when the gap ends, newest value first, so
  the last progress value is never dropped. A finished run's ``run``
  message goes out only after all of its output.

Joining is exact: a client sends the last seq it has; under the hub's lock
the server sends it every chunk after that up to the room's ``last_seq`` and
then adds it to the room, whose broadcasts continue from ``last_seq + 1``. So
reconnecting clients neither miss nor repeat a line.

When the database is unreachable (a tick fails with StoreError, or one has
waited ``stall_s`` for an answer) every client gets ``store_status``
``{ok: false, message}``; the hub retries with backoff (up to
``retry_max_s``) and sends ``{ok: true}`` after the first tick that the
database answered. Rooms keep their ``last_seq`` meanwhile, so the output
resumes where each room stopped.

The Socket.IO handlers (who may connect, joining rooms) are in
:mod:`sooner.webapp.live_socket`. The protocol is documented in README.md
("Live protocol").
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from flask_socketio import SocketIO

from sooner.errors import StoreError
from sooner.model.waiting import wait_reasons
from sooner.webapp.views import build_snapshot, run_summary

if TYPE_CHECKING:
    from sooner.clock import Clock
    from sooner.config import Settings
    from sooner.model import Run
    from sooner.store import Store
    from sooner.store.changes import Change

logger = logging.getLogger(__name__)

DASHBOARD = "dashboard"
# The change feeds the hub follows (see sooner.store.changes).
FEEDS = ("run_output", "runs")
# How many new chunks one tick reads per room.
OUTPUT_BATCH = 1000
# How many output batches a finished run's last lines may take before its final status is sent (else next tick).
DRAIN_BATCHES = 5
STORE_DOWN = "database unreachable — retrying; output will continue"
STORE_BACK = "database reachable again"


def run_room(run_id: str) -> str:
    return f"run:{run_id}"


@dataclass
class RunRoom:
    """A watched run: who watches, the last chunk broadcast, the last status sent and when."""

    run_id: str
    last_seq: int
    sids: set[str] = field(default_factory=set)
    status_key: str = ""
    gap_since: float | None = None
    sent_at: float = float("-inf")
    status_sent_at: float = float("-inf")


@dataclass
class ShownRun:
    """A running run the dashboard shows: the state last sent and when (throttled like a room's ``run``)."""

    key: str
    sent_at: float = float("-inf")


class LiveHub:
    """Reads what watched pages need from MongoDB and pushes it to Socket.IO rooms."""

    def __init__(self, socketio: SocketIO, store: Store, settings: Settings, *, interval_s: float = 0.05,
                 dashboard_s: float = 0.5, sweep_s: float = 1.0, backlog_limit: int = 5000,
                 batch_chars: int = 1_000_000, gap_wait_s: float = 2.0, min_gap_s: float = 0.04,
                 status_gap_s: float = 0.1, stall_s: float = 3.0, retry_max_s: float = 2.0,
                 clock: Clock | None = None) -> None:
        self.socketio = socketio
        self.store = store
        self.settings = settings
        self.interval_s = interval_s
        self.dashboard_s = dashboard_s
        self.sweep_s = sweep_s
        self.backlog_limit = backlog_limit
        self.batch_chars = batch_chars
        self.gap_wait_s = gap_wait_s
        self.min_gap_s = min_gap_s
        self.status_gap_s = status_gap_s
        self.stall_s = stall_s
        self.retry_max_s = retry_max_s
        self.clock = clock or store.clock  # monotonic() paces the rooms; now() stamps what is sent
        self.rooms: dict[str, RunRoom] = {}
        self.dashboard_sids: set[str] = set()
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._dirty: set[str] = set()  # runs with new output (from change streams)
        self._dirty_status: set[str] = set()  # runs whose document changed
        self._streaming = dict.fromkeys(FEEDS, False)  # per feed: is a change stream open?
        self._feeds_stop: threading.Event | None = None  # set ends the change-feed watchers (nobody watches)
        self._last_sweep = float("-inf")
        self._last_dashboard = float("-inf")
        self._dashboard_key = ""
        self._dashboard_sent = float("-inf")
        self._dashboard_runs: dict[str, ShownRun] = {}  # the running runs of the last snapshot sent
        self._dirty_dashboard: set[str] = set()  # ... whose document changed
        self._store_ok = True
        self._store_lock = threading.Lock()  # not _lock: a tick stuck in the database holds that one
        self._tick_started: float | None = None
        self._backoff = interval_s  # the pause after the next failed tick
        self._due = float("inf")  # when the first throttled room's gap ends: the loop wakes then, not a tick later
        self._started = False
        self.stop_event = threading.Event()

    # -- subscriptions (called from Socket.IO handlers) ----------------------
    def join_run(self, sid: str, run_id: str, after_seq: int) -> dict[str, Any] | None:
        """Send ``sid`` every chunk after ``after_seq`` and the run's state, then add it to the run's room.

        None if there is no such run; StoreError while the database is unreachable. Joining a run the
        client already follows changes nothing.
        """
        self._require_store()
        found = self.store.reads.run_statuses([run_id])
        if not found:
            return None
        run = found[0]
        with self._lock:
            room = self.rooms.get(run_id)
            if room is None:
                # The room starts at what the database holds, never at what a client claims.
                room = self.rooms[run_id] = RunRoom(run_id, self.store.output.last_seq(run_id))
            now = self.clock.now()
            waiting = wait_reasons(self.store.reads, [run], now, self.settings.heartbeat_s).get(run.id)
            summary = run_summary(run, now, waiting)
            if sid not in room.sids:
                chunks, skipped = self._backlog(run_id, after_seq, room.last_seq)
                if chunks or skipped:
                    self.socketio.emit("output", {"run": run_id, "chunks": chunks, "skipped": skipped}, to=sid)
                self.socketio.emit("run", summary, to=sid)
                self.socketio.server.enter_room(sid, run_room(run_id), namespace="/")
                room.sids.add(sid)
        self.start()
        self._wake.set()
        return {"ok": True, "last_seq": room.last_seq, "status": summary["status"]}

    def leave_run(self, sid: str, run_id: str) -> None:
        with self._lock:
            room = self.rooms.get(run_id)
            if room is not None:
                room.sids.discard(sid)
                self.socketio.server.leave_room(sid, run_room(run_id), namespace="/")
                if not room.sids:
                    del self.rooms[run_id]
                    self._watch_feeds()

    def join_dashboard(self, sid: str) -> None:
        self._require_store()
        snapshot = build_snapshot(self.store, self.settings, self.clock.now())
        with self._lock:
            self.socketio.emit("dashboard", snapshot, to=sid)
            self.socketio.server.enter_room(sid, DASHBOARD, namespace="/")
            self.dashboard_sids.add(sid)
        self.start()
        self._wake.set()

    def disconnect(self, sid: str) -> None:
        with self._lock:
            self.dashboard_sids.discard(sid)
            for run_id in [r for r, room in self.rooms.items() if sid in room.sids]:
                self.leave_run(sid, run_id)
            self._watch_feeds()

    def _backlog(self, run_id: str, after_seq: int, upto: int) -> tuple[list[dict], bool]:
        docs, skipped = self.store.reads.output_between(run_id, after_seq, upto, newest=self.backlog_limit)
        return [_chunk(d) for d in docs], skipped

    # -- one step ------------------------------------------------------------
    def tick(self) -> int:
        """Read what changed for watched runs and the dashboard, emit it; returns how many messages went out.

        Raises StoreError when the database did not answer (:meth:`run_once` backs off and tries again).
        """
        sent = 0
        self._tick_started = self.clock.monotonic()
        try:
            if not self.store_ok:
                # Idle rooms read nothing, so ask before saying it is back; outside the lock, so that
                # leaving and disconnecting clients do not wait for an unreachable database.
                self.store.ping()
            with self._lock:
                now = self.clock.monotonic()
                if not self.store_ok:
                    self._resume()
                sent += self._send_rooms(now)
                if self.dashboard_sids:
                    sent += self._send_dashboard_changes(now)
                if not self.store_ok:
                    self._store_back()
        finally:
            self._tick_started = None
        return sent

    def _send_rooms(self, now: float) -> int:
        if not self.rooms:
            return 0
        sent = 0
        # Swap the sets out first: watcher threads keep adding to fresh ones meanwhile.
        dirty, self._dirty = self._dirty, set()
        dirty_status, self._dirty_status = self._dirty_status, set()
        sweep = not self.streaming or now - self._last_sweep >= self.sweep_s
        if sweep:
            self._last_sweep = now
            output_ids = status_ids = list(self.rooms)
        else:
            output_ids = [r for r in dirty if r in self.rooms]
            status_ids = [r for r in dirty_status if r in self.rooms]
        try:
            # Output first: it is what people watch; a status query would only delay it.
            for run_id in output_ids:
                sent += self._send_output(self.rooms[run_id], now)
            if status_ids:
                sent += self._send_statuses(status_ids, now)
        except BaseException:
            # Read them again next time; what went out already does not again (rooms keep their last_seq).
            self._dirty |= dirty
            self._dirty_status |= dirty_status
            raise
        return sent

    def _send_statuses(self, ids: list[str], now: float) -> int:
        sent = 0
        wall = self.clock.now()
        runs = self.store.reads.run_statuses(ids)
        # Why a queued run waits changes with the workers and the queue, not its document: sweeps look again.
        waits = wait_reasons(self.store.reads, runs, wall, self.settings.heartbeat_s)
        for run in runs:
            room = self.rooms.get(run.id)
            if room is None:
                continue
            waiting = waits.get(run.id)
            key = _status_key(run) + (waiting.message if waiting else "")
            if key == room.status_key:
                continue
            if self._within_gap(room.status_sent_at, now):
                self._dirty_status.add(run.id)  # throttled: the newest state goes out once the gap has passed
                self._due = min(self._due, room.status_sent_at + self.status_gap_s)
                continue
            if run.status.finished and not self._drain_output(room, now):
                self._dirty_status.add(run.id)  # its last lines first; the end follows next tick
                continue
            room.status_key, room.status_sent_at = key, now
            self.socketio.emit("run", run_summary(run, wall, waiting), to=run_room(run.id))
            sent += 1
        return sent

    def _within_gap(self, sent_at: float, now: float) -> bool:
        # A microsecond's grace: gaps summed from float ticks (0.05 + 0.05) fall just short of 0.1.
        return now - sent_at < self.status_gap_s - 1e-6

    def _drain_output(self, room: RunRoom, now: float) -> bool:
        """Send the room all stored output now (a finished run's last lines precede its end).

        False if more is left, or a hole in the seqs is being waited for (see ``gap_wait_s``).
        """
        for _ in range(DRAIN_BATCHES):
            if not self._send_output(room, now, force=True):
                return room.gap_since is None
        return False

    def _send_output(self, room: RunRoom, now: float, force: bool = False) -> int:
        """Emit the room's next chunks; ``force`` ignores ``min_gap_s``. Returns the messages sent (0 or 1)."""
        if not force and now - room.sent_at < self.min_gap_s:
            # A busy run: send one bigger message a little later instead of one per insert,
            # which is what keeps 50 watchers of a chatty run from falling behind.
            self._dirty.add(room.run_id)
            self._due = min(self._due, room.sent_at + self.min_gap_s)
            return 0
        docs = self.store.output.read(room.run_id, after_seq=room.last_seq, limit=OUTPUT_BATCH)
        chunks: list[dict] = []
        size = 0
        expected = room.last_seq + 1 if room.last_seq >= 0 else None
        for doc in docs:
            # A writer inserts a batch in order; a hole means the rest of the
            # batch is not visible yet. Wait briefly for it, then move on.
            if expected is not None and doc["seq"] != expected:
                room.gap_since = room.gap_since if room.gap_since is not None else now
                if now - room.gap_since < self.gap_wait_s:
                    break
            room.gap_since = None
            chunks.append(_chunk(doc))
            size += len(doc.get("text", ""))
            expected = doc["seq"] + 1
            if size >= self.batch_chars:
                break
        if room.gap_since is not None:
            self._dirty.add(room.run_id)  # look again next tick
        if not chunks:
            return 0
        room.last_seq = chunks[-1]["seq"]
        room.sent_at = now
        self.socketio.emit("output", {"run": room.run_id, "chunks": chunks}, to=run_room(room.run_id))
        if len(chunks) < len(docs) or len(docs) >= OUTPUT_BATCH:
            self._dirty.add(room.run_id)  # more to send next tick
        return 1

    def _send_dashboard_changes(self, now: float) -> int:
        """A snapshot every ``dashboard_s`` if it changed; between them, the progress of the runs it shows."""
        dirty, self._dirty_dashboard = self._dirty_dashboard, set()
        if now - self._last_dashboard >= self.dashboard_s:
            self._last_dashboard = now
            return self._send_dashboard(now)
        ids = list(self._dashboard_runs) if not self.streaming else [r for r in dirty if r in self._dashboard_runs]
        if not ids:
            return 0
        sent = 0
        wall = self.clock.now()
        for run in self.store.reads.run_statuses(ids):
            shown = self._dashboard_runs.get(run.id)
            summary = run_summary(run, wall)
            key = _summary_key(summary)
            if shown is None or key == shown.key:
                continue
            if self._within_gap(shown.sent_at, now):
                self._dirty_dashboard.add(run.id)  # throttled like a room's: the newest goes out after the gap
                continue
            shown.key, shown.sent_at = key, now
            self.socketio.emit("run", summary, to=DASHBOARD)
            sent += 1
        return sent

    def _send_dashboard(self, now: float) -> int:
        snapshot = build_snapshot(self.store, self.settings, self.clock.now())
        stable = {**snapshot, "workers": [{k: v for k, v in w.items() if k != "age_s"} for w in snapshot["workers"]],
                  "running": [{k: v for k, v in r.items() if k != "duration_s"} for r in snapshot["running"]]}
        key = json.dumps(stable, sort_keys=True, default=str)
        if key == self._dashboard_key and now - self._dashboard_sent < 5.0:
            return 0
        self._dashboard_key, self._dashboard_sent = key, now
        self._dashboard_runs = {r["id"]: ShownRun(_summary_key(r), now) for r in snapshot["running"]}
        self.socketio.emit("dashboard", snapshot, to=DASHBOARD)
        return 1

    # -- the database's state, as clients see it -------------------------------
    @property
    def store_ok(self) -> bool:
        """False from the first sign that the database is unreachable until a tick it answered."""
        return self._store_ok

    def store_status(self) -> dict[str, Any]:
        """The ``store_status`` message for the current state."""
        return {"ok": self._store_ok, "message": STORE_BACK if self._store_ok else STORE_DOWN}

    def store_failed(self, reason: object) -> None:
        """The database did not answer: tell every client, once per outage. Safe from any thread."""
        with self._store_lock:
            if not self._store_ok:
                return
            self._store_ok = False
        logger.warning("live updates: database unreachable (%s); retrying", reason)
        self.socketio.emit("store_status", self.store_status())

    def check_stall(self) -> bool:
        """One step of the watchdog: a tick waiting ``stall_s`` for the database means it is unreachable."""
        started = self._tick_started
        if started is not None and self.clock.monotonic() - started >= self.stall_s:
            self.store_failed(f"no answer for {self.stall_s:g} s")
            return True
        return False

    def _require_store(self) -> None:
        if not self._store_ok:
            raise StoreError(STORE_DOWN)

    def _resume(self) -> None:
        """Under ``_lock``, before the first tick after an outage: read every room and the dashboard again
        (dirty marks may be lost), and let no hole-wait that spans the outage skip a line."""
        self._last_sweep = self._last_dashboard = float("-inf")
        self._dashboard_key = ""
        for room in self.rooms.values():
            room.gap_since = None

    def _store_back(self) -> None:
        """Called under ``_lock`` after a tick the database answered while it was thought unreachable."""
        with self._store_lock:
            if self._store_ok:
                return
            self._store_ok = True
        logger.warning("live updates: database reachable again; resuming")
        self.socketio.emit("store_status", self.store_status())
        self._wake.set()

    # -- running -------------------------------------------------------------
    def start(self) -> None:
        """Start the background loop and the stall watchdog once, and the change-stream watchers while watched."""
        with self._lock:
            if not getattr(self, "autostart", True):
                return
            if not self._started:
                self._started = True
                self.socketio.start_background_task(self.run_forever)
                self.socketio.start_background_task(self._watch_stalls)
            self._watch_feeds()

    def _watch_feeds(self) -> None:
        """Under ``_lock``: follow the change feeds while anyone watches, stop when nobody does.

        A feed costs the database even when nothing changes, so an idle web
        process follows none; until a new stream is open, ticks sweep.
        """
        watched = self._started and bool(self.rooms or self.dashboard_sids) and not self.stop_event.is_set()
        if watched and self._feeds_stop is None:
            stop = self._feeds_stop = threading.Event()
            for kind, on_change in (("run_output", self._output_changed), ("runs", self._run_changed)):
                self.socketio.start_background_task(self._follow, kind, on_change, stop)
        elif not watched and self._feeds_stop is not None:
            self._feeds_stop.set()
            self._feeds_stop = None
            self._streaming = dict.fromkeys(FEEDS, False)

    def run_forever(self) -> None:
        """Call :meth:`run_once` until ``stop_event`` is set, waiting what it says between failed ticks."""
        while not self.stop_event.is_set():
            idle = not self.rooms and not self.dashboard_sids and self.store_ok
            self._wake.wait(1.0 if idle else self._pause())
            self._wake.clear()
            pause = self.run_once()
            if pause > 0:
                self.stop_event.wait(pause)
        with self._lock:
            self._watch_feeds()  # stopping: the watchers end too

    def _pause(self) -> float:
        """How long the loop waits for a change: ``interval_s``, or less when a throttled room's gap ends sooner
        (waiting a whole tick after the gap added up to 50 ms to a line of a busy run)."""
        due, self._due = self._due, float("inf")
        return max(0.0, min(self.interval_s, due + 0.001 - self.clock.monotonic()))

    def run_once(self) -> float:
        """One tick with the loop's error handling; returns how long to pause before the next (0 after a good one).

        A database error tells every client (``store_status``) and backs off, doubling from ``interval_s`` up to
        ``retry_max_s``, so an outage is neither fatal nor a busy loop.
        """
        try:
            self.tick()
        except StoreError as exc:
            self.store_failed(exc)
            logger.info("live updates: tick failed; retrying in %.2fs: %s", self._backoff, exc)
        except Exception:  # a bug: keep serving pages; the next tick retries
            logger.exception("live updates: tick failed; retrying in %.2fs", self._backoff)
        else:
            self._backoff = self.interval_s
            return 0.0
        pause, self._backoff = self._backoff, min(self._backoff * 2, self.retry_max_s)
        return pause

    def _watch_stalls(self) -> None:
        while not self.stop_event.wait(self.stall_s / 4):
            self.check_stall()

    @property
    def streaming(self) -> bool:
        """Whether every change feed the hub follows has a stream open (else each tick sweeps every room)."""
        return all(self._streaming.values())

    def _output_changed(self, change: Change) -> None:
        if change.run_id in self.rooms:
            self._dirty.add(change.run_id)
            self._wake.set()

    def _run_changed(self, change: Change) -> None:
        if change.run_id in self.rooms:
            self._dirty_status.add(change.run_id)
            self._wake.set()
        if change.run_id in self._dashboard_runs:
            self._dirty_dashboard.add(change.run_id)
            self._wake.set()

    def _follow(self, kind: str, on_change: Callable[[Change], None], stop: threading.Event) -> None:
        """Follow one change feed until ``stop``; the store reports when to fall back to polling."""
        def on_state(streaming: bool) -> None:
            if not stop.is_set():  # a watcher that was told to end no longer speaks for the feed
                self._streaming[kind] = streaming
        self.store.changes.follow(kind, on_change, stop=stop, on_state=on_state)


def _status_key(run: Run) -> str:
    """What a watcher sees of a run's state: a new key means a new ``run`` message."""
    progress = run.progress.to_doc() if run.progress else None
    return json.dumps([run.status.value, progress, run.worker, run.exit_code, run.note, run.cancel_requested,
                       run.started_at, run.finished_at], default=str)


def _summary_key(summary: dict[str, Any]) -> str:
    """What a dashboard viewer sees of a run (its duration ticks by itself)."""
    return json.dumps({k: v for k, v in summary.items() if k != "duration_s"}, sort_keys=True, default=str)


def _chunk(doc: dict) -> dict[str, Any]:
    return {"seq": doc["seq"], "stream": doc.get("stream", "stdout"), "text": doc.get("text", "")}
