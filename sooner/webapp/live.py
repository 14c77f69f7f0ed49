"""Live updates over Socket.IO: run output, progress and status, and the dashboard.

Every process talks only to MongoDB, so the web server learns about new
output by reading it. :class:`LiveHub` keeps one room per watched run
(``run:<id>``) and a ``dashboard`` room, and only reads what someone watches:

* ``tick()`` is one step: for each watched run, read chunks after the room's
  ``last_seq`` and the run's status/progress, and emit what changed to the
  room; every ``dashboard_s`` it emits a dashboard snapshot if it changed.
* ``run_forever()`` calls ``tick()`` every ``interval_s`` (50 ms). Where the
  database offers change streams (the embedded server and replica sets do),
  watcher threads following ``store.changes`` wake it as soon as output is
  inserted and tell it which runs changed, so a tick reads only those (plus
  a full sweep every ``sweep_s``); where there are no change streams
  (standalone MongoDB, mongomock) every tick sweeps.
  A room gets at most one output message per ``min_gap_s`` (40 ms): a chatty
  run is sent in fewer, bigger messages rather than falling behind.

Joining is exact: a client sends the last seq it has; under the hub's lock
the server sends it every chunk after that up to the room's ``last_seq`` and
then adds it to the room, whose broadcasts continue from ``last_seq + 1``. So
reconnecting clients neither miss nor repeat a line.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from flask import request
from flask_socketio import SocketIO

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


def run_room(run_id: str) -> str:
    return f"run:{run_id}"


@dataclass
class RunRoom:
    """A watched run: who watches, the last chunk broadcast, the last status sent."""

    run_id: str
    last_seq: int
    sids: set[str] = field(default_factory=set)
    status_key: str = ""
    gap_since: float | None = None
    sent_at: float = float("-inf")


class LiveHub:
    """Reads what watched pages need from MongoDB and pushes it to Socket.IO rooms."""

    def __init__(self, socketio: SocketIO, store: Store, settings: Settings, *, interval_s: float = 0.05,
                 dashboard_s: float = 0.5, sweep_s: float = 1.0, backlog_limit: int = 5000,
                 batch_chars: int = 1_000_000, gap_wait_s: float = 2.0, min_gap_s: float = 0.04,
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
        self.clock = clock or store.clock  # monotonic() paces the rooms; now() stamps what is sent
        self.rooms: dict[str, RunRoom] = {}
        self.dashboard_sids: set[str] = set()
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._dirty: set[str] = set()  # runs with new output (from change streams)
        self._dirty_status: set[str] = set()  # runs whose document changed
        self._streaming = dict.fromkeys(FEEDS, False)  # per feed: is a change stream open?
        self._last_sweep = float("-inf")
        self._last_dashboard = float("-inf")
        self._dashboard_key = ""
        self._dashboard_sent = float("-inf")
        self._started = False
        self.stop_event = threading.Event()

    # -- subscriptions (called from Socket.IO handlers) ----------------------
    def join_run(self, sid: str, run_id: str, after_seq: int) -> dict[str, Any] | None:
        """Send ``sid`` every chunk after ``after_seq`` and the run's state, then add it to the run's room."""
        found = self.store.reads.run_statuses([run_id])
        if not found:
            return None
        run = found[0]
        with self._lock:
            room = self.rooms.get(run_id)
            if room is None:
                # The room starts at what the database holds, never at what a client claims.
                room = self.rooms[run_id] = RunRoom(run_id, self.store.output.last_seq(run_id))
            chunks, skipped = self._backlog(run_id, after_seq, room.last_seq)
            if chunks or skipped:
                self.socketio.emit("output", {"run": run_id, "chunks": chunks, "skipped": skipped}, to=sid)
            summary = run_summary(run, self.clock.now())
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

    def join_dashboard(self, sid: str) -> None:
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

    def _backlog(self, run_id: str, after_seq: int, upto: int) -> tuple[list[dict], bool]:
        docs, skipped = self.store.reads.output_between(run_id, after_seq, upto, newest=self.backlog_limit)
        return [_chunk(d) for d in docs], skipped

    # -- one step ------------------------------------------------------------
    def tick(self) -> int:
        """Read what changed for watched runs and the dashboard, emit it; returns how many messages went out."""
        sent = 0
        with self._lock:
            now = self.clock.monotonic()
            if self.rooms:
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
                # Output first: it is what people watch; a status query would only delay it.
                for run_id in output_ids:
                    sent += self._send_output(self.rooms[run_id], now)
                if status_ids:
                    sent += self._send_statuses(status_ids)
            if self.dashboard_sids and now - self._last_dashboard >= self.dashboard_s:
                self._last_dashboard = now
                sent += self._send_dashboard(now)
        return sent

    def _send_statuses(self, ids: list[str]) -> int:
        sent = 0
        now = self.clock.now()
        for run in self.store.reads.run_statuses(ids):
            room = self.rooms[run.id]
            key = _status_key(run)
            if key != room.status_key:
                room.status_key = key
                self.socketio.emit("run", run_summary(run, now), to=run_room(run.id))
                sent += 1
        return sent

    def _send_output(self, room: RunRoom, now: float) -> int:
        if now - room.sent_at < self.min_gap_s:
            # A busy run: send one bigger message a little later instead of one per insert,
            # which is what keeps 50 watchers of a chatty run from falling behind.
            self._dirty.add(room.run_id)
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
        if len(chunks) < len(docs):
            self._dirty.add(room.run_id)  # more to send next tick
        return 1

    def _send_dashboard(self, now: float) -> int:
        snapshot = build_snapshot(self.store, self.settings, self.clock.now())
        stable = {**snapshot, "workers": [{k: v for k, v in w.items() if k != "age_s"} for w in snapshot["workers"]],
                  "running": [{k: v for k, v in r.items() if k != "duration_s"} for r in snapshot["running"]]}
        key = json.dumps(stable, sort_keys=True, default=str)
        if key == self._dashboard_key and now - self._dashboard_sent < 5.0:
            return 0
        self._dashboard_key, self._dashboard_sent = key, now
        self.socketio.emit("dashboard", snapshot, to=DASHBOARD)
        return 1

    # -- running -------------------------------------------------------------
    def start(self) -> None:
        """Start the background loop (and change-stream watchers) once."""
        with self._lock:
            if self._started or not getattr(self, "autostart", True):
                return
            self._started = True
        self.socketio.start_background_task(self.run_forever)
        for kind, on_change in (("run_output", self._output_changed), ("runs", self._run_changed)):
            self.socketio.start_background_task(self._follow, kind, on_change)

    def run_forever(self) -> None:
        """Tick until ``stop_event`` is set; back off on database errors."""
        backoff = self.interval_s
        while not self.stop_event.is_set():
            idle = not self.rooms and not self.dashboard_sids
            self._wake.wait(1.0 if idle else self.interval_s)
            self._wake.clear()
            try:
                self.tick()
                backoff = self.interval_s
            except Exception:  # keep serving pages; the next tick retries
                logger.exception("live updates: tick failed; retrying in %.1fs", backoff)
                self.stop_event.wait(backoff)
                backoff = min(backoff * 2, 5.0)

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

    def _follow(self, kind: str, on_change: Callable[[Change], None]) -> None:
        """Follow one change feed until ``stop_event``; the store reports when to fall back to polling."""
        def on_state(streaming: bool) -> None:
            self._streaming[kind] = streaming
        self.store.changes.follow(kind, on_change, stop=self.stop_event, on_state=on_state)


def _status_key(run: Run) -> str:
    """What a watcher sees of a run's state: a new key means a new ``run`` message."""
    progress = run.progress.to_doc() if run.progress else None
    return json.dumps([run.status.value, progress, run.worker, run.exit_code, run.note, run.cancel_requested,
                       run.started_at, run.finished_at], default=str)


def _chunk(doc: dict) -> dict[str, Any]:
    return {"seq": doc["seq"], "stream": doc.get("stream", "stdout"), "text": doc.get("text", "")}


def register(socketio: SocketIO, hub: LiveHub) -> None:
    """Socket.IO handlers: connections need a signed-in session; clients join run and dashboard rooms."""

    @socketio.on("connect")
    def connect(auth: Any = None) -> bool:
        from sooner.webapp.auth import live_session

        # The same check as every HTTP request: a live session whose user's epoch still matches.
        return live_session() is not None  # False refuses: the client sees a connect_error

    @socketio.on("disconnect")
    def disconnect(reason: Any = None) -> None:
        hub.disconnect(request.sid)  # type: ignore[attr-defined]

    @socketio.on("join_run")
    def join_run(data: Any) -> dict[str, Any]:
        if not isinstance(data, dict) or not isinstance(data.get("run"), str) or len(data["run"]) > 64:
            return {"ok": False, "error": "send {run: id, after_seq: n}"}
        after = data.get("after_seq", -1)
        if not isinstance(after, int) or isinstance(after, bool):
            return {"ok": False, "error": "after_seq must be an integer"}
        result = hub.join_run(request.sid, data["run"], max(after, -1))  # type: ignore[attr-defined]
        return result or {"ok": False, "error": f"no run with id {data['run']!r}"}

    @socketio.on("leave_run")
    def leave_run(data: Any) -> None:
        if isinstance(data, dict) and isinstance(data.get("run"), str):
            hub.leave_run(request.sid, data["run"])  # type: ignore[attr-defined]

    @socketio.on("join_dashboard")
    def join_dashboard(data: Any = None) -> dict[str, Any]:
        hub.join_dashboard(request.sid)  # type: ignore[attr-defined]
        return {"ok": True}
