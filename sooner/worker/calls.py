"""What a script's calls do, whichever channel (stderr line or socket) carried them.

``progress`` updates the run's progress bar; database writes are throttled to
one per ``throttle_s`` per run, and the newest value is always written in the
end (:meth:`CallHandler.flush_progress`). ``emit`` stores an event and starts
the hooked jobs, one level deeper in the chain than the emitting run; a run
may emit :data:`EMIT_BURST` events at once, then :data:`EMIT_PER_S` a second.

With an outage journal (:mod:`sooner.worker.journal`; a worker's runs have
one) nothing waits on an unreachable database: progress values and events
are journaled, the script is told an event was ``spooled``, and the records
are stored in order once the database is back. Without one (tests, tools):

Recording one call never ends the run. A store failure while recording it is
logged and reported to the script (:class:`CallNotRecorded`: JSON-RPC -32603
on the socket, a system note on stderr); a progress value that could not be
written stays pending and is retried, with backoff, at the next flush, and
:meth:`CallHandler.flush_progress`, which the run's own thread calls, never
raises.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from bson import ObjectId

from sooner.errors import ProtocolError, StoreError, StoreUnreachable
from sooner.metrics import PROCESS
from sooner.model.job_settings import validate_event_name
from sooner.worker.methods import METHODS, MethodRegistry, excerpt
from sooner.worker.protocol import Call

if TYPE_CHECKING:
    from sooner.model import Run
    from sooner.runs.service import RunService
    from sooner.worker.journal import RunJournal, StoreLink

logger = logging.getLogger(__name__)

PROGRESS_THROTTLE_S = 0.05
PROGRESS_RETRY_FIRST_S = 0.25
"""After a failed progress write, the next try waits this long, doubling per failure …"""
PROGRESS_RETRY_MAX_S = 5.0
"""… up to this, so a database that is down is not asked twenty times a second per run."""
EMIT_BURST = 100
"""Events a run may emit at once: a loop over a batch of items is fine, a runaway loop is not."""
EMIT_PER_S = 20.0
"""Events a run may emit per second once its burst is spent; each one may start runs."""

# What the database driver raises comes from these packages; only sooner.store calls the driver, and its
# retrier passes on everything but connection failures unchanged (those become StoreError).
_DRIVER_PACKAGES = frozenset({"pymongo", "bson", "mongomock"})


def is_store_failure(exc: BaseException) -> bool:
    """True for a failure of the database: a StoreError, or an error the driver raised (PyMongoError, BSONError)."""
    return isinstance(exc, StoreError) or any(cls.__module__.partition(".")[0] in _DRIVER_PACKAGES
                                              for cls in type(exc).__mro__)


class CallNotRecorded(StoreError):
    """The store failed while recording a script's call; the run goes on without it."""

    def __init__(self, what: str, cause: BaseException, then: str = "") -> None:
        self.cause = cause
        reason = str(cause) or type(cause).__name__
        super().__init__(f"{what} was not recorded: {excerpt(reason, 200)}{then}")


class TokenBucket:
    """Allow ``burst`` actions at once, then ``per_s`` a second (``now`` is a monotonic clock in seconds)."""

    def __init__(self, burst: int, per_s: float, now: Callable[[], float] = time.monotonic) -> None:
        self.burst = burst
        self.per_s = per_s
        self.now = now
        self._tokens = float(burst)
        self._at = now()
        self._lock = threading.Lock()

    def take(self) -> bool:
        """Spend one token if there is one; False means the action is over the limit."""
        with self._lock:
            now = self.now()
            self._tokens = min(float(self.burst), self._tokens + (now - self._at) * self.per_s)
            self._at = now
            if self._tokens < 1:
                return False
            self._tokens -= 1
            return True


class CallHandler:
    """Apply one run's calls. Thread-safe: the socket server and the output reader share it.

    ``registry`` holds the methods this run offers; each call is dispatched to
    its method's handler, which calls back :meth:`progress` or :meth:`emit`.

    ``on_pending`` is called (without arguments) when a throttled progress
    value waits to be written, so the run's loop can wake up and write it at
    :meth:`progress_due`. ``emits`` limits the run's emit rate (default:
    :data:`EMIT_BURST` then :data:`EMIT_PER_S`).
    """

    def __init__(self, service: RunService, run: Run, *, throttle_s: float = PROGRESS_THROTTLE_S,
                 on_pending: Callable[[], None] | None = None, registry: MethodRegistry = METHODS,
                 emits: TokenBucket | None = None, journal: RunJournal | None = None,
                 link: StoreLink | None = None) -> None:
        self.service = service
        # With a journal, progress and events the database cannot take now are journaled (sooner.worker.journal).
        self.journal = journal
        self.link = link
        self.store = service.store
        self.registry = registry  # the socket server and stderr reader parse calls against it too
        self.run_id = run.id
        self.job = run.job
        self.depth = run.depth
        self.throttle_s = throttle_s
        self.on_pending = on_pending
        self.emits = emits or TokenBucket(EMIT_BURST, EMIT_PER_S)
        self.calls = 0
        self._latest: tuple[float, float] | None = None
        self._written: tuple[float, float] | None = None
        self._last_write = float("-inf")
        self._retry_s = 0.0  # the backoff after failed writes; 0 while writes succeed
        self._signalled = False  # on_pending was called for the value waiting now
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()

    def __call__(self, call: Call) -> Any:
        """Handle a validated call through its method's declaration (see :mod:`sooner.worker.methods`).

        Raises ProtocolError for a call the method refuses (an event name the
        store rejects, an emit over the rate limit; UnknownMethod for a name
        this handler's registry lacks) and :class:`CallNotRecorded` when the
        store failed to record it.
        """
        self.calls += 1
        PROCESS.rpc_calls.labels(call.method).inc()
        return self.registry.get(call.method).handle(self, call.args)

    def progress(self, current: float, maximum: float) -> None:
        """Take the newest value; write it now unless the throttle (or a failing store) says later.

        Raises :class:`CallNotRecorded` when writing it now failed: the value
        stays pending and is retried, so the script need do nothing.
        """
        with self._lock:
            self._latest = (current, maximum)
            write_now = time.monotonic() >= self._next_write_at()
            signal = not write_now and not self._signalled
            if signal:
                self._signalled = True
        if write_now:
            failure = self._write_progress(force=True)
            if failure is not None:
                self._signal_pending()
                raise CallNotRecorded(f"progress {current}/{maximum}", failure,
                                      "; the newest value is written once the database takes it")
        elif signal and self.on_pending is not None:
            self.on_pending()

    def progress_due(self) -> float | None:
        """The monotonic time at which a waiting progress value should be written, or None."""
        with self._lock:
            if self._latest is None or self._latest == self._written:
                return None
            return self._next_write_at()

    def flush_progress(self, force: bool = False) -> None:
        """Write the newest progress if it is not stored yet (and the throttle allows, unless ``force``).

        Never raises: the run's thread calls it. A failed write is logged and
        retried at the next flush.
        """
        self._write_progress(force)

    def emit(self, event: str, data: Any = None) -> dict[str, Any]:
        """Store the event (see :meth:`RunService.emit`); raises ProtocolError over the rate limit."""
        if not self.emits.take():
            raise ProtocolError(f"emit: over the rate limit ({self.emits.burst} at once, then "
                                f"{self.emits.per_s:g} per second): event {excerpt(event)!r} was not stored")
        try:
            validate_event_name(event)
        except ValueError as exc:  # an invalid event name (InvalidJobSetting is a ValueError)
            raise ProtocolError(str(exc)) from None
        source, depth = {"type": "run", "run": self.run_id, "job": self.job}, self.depth + 1
        # The id is chosen here, so an event stored just before the database went away is not stored twice.
        event_id = str(ObjectId())
        if self._spooling():
            return self._spool_emit(event, data, source, depth, event_id)
        try:
            stored = self.service.emit(event, data, source=source, depth=depth, event_id=event_id)
        except ValueError as exc:
            raise ProtocolError(str(exc)) from None
        except StoreUnreachable as exc:
            if self.journal is None:
                logger.warning("run %s: emit %r not recorded: %s", self.run_id, event, exc)
                raise CallNotRecorded(f"emit {excerpt(event)!r}", exc) from exc
            self._went_down(exc)
            return self._spool_emit(event, data, source, depth, event_id)
        except Exception as exc:
            if not is_store_failure(exc):
                raise
            logger.warning("run %s: emit %r not recorded: %s", self.run_id, event, exc)
            raise CallNotRecorded(f"emit {excerpt(event)!r}", exc) from exc
        result: dict[str, Any] = {"event": stored["_id"], "runs": stored.get("runs", [])}
        if stored.get("note"):
            result["note"] = stored["note"]
        return result

    # -- the outage journal ---------------------------------------------------
    def _spooling(self) -> bool:
        """Journal this call: the database is unreachable, or the journal still holds earlier records."""
        journal, link = self.journal, self.link
        return journal is not None and (journal.active or (link is not None and link.down))

    def _went_down(self, exc: BaseException) -> None:
        if self.link is not None:
            self.link.failed(exc)

    def _spool_emit(self, event: str, data: Any, source: dict[str, Any], depth: int, event_id: str) -> dict[str, Any]:
        assert self.journal is not None
        self.journal.emit(event, data, source=source, depth=depth, t=self.service.clock.now(), event_id=event_id)
        return {"event": event_id, "runs": [], "spooled": True,
                "note": "the database is unreachable: the event is stored, and the jobs hooked to it start, "
                        "once it is back"}

    # -- progress writes ---------------------------------------------------
    def _next_write_at(self) -> float:
        """When the next write may happen (called with ``_lock`` held)."""
        return self._last_write + max(self.throttle_s, self._retry_s)

    def _write_progress(self, force: bool) -> Exception | None:
        """Write the pending value if due; returns the store failure that left it pending, if any."""
        with self._write_lock:
            with self._lock:
                latest = self._latest
                if latest is None or latest == self._written:
                    return None
                if not force and time.monotonic() < self._next_write_at():
                    return None
                self._last_write = time.monotonic()
                self._signalled = False
            try:
                if self._spooling():
                    self._spool_progress(latest)
                else:
                    self.store.runs.set_progress(self.run_id, latest[0], latest[1])
            except StoreUnreachable as exc:
                if self.journal is None:
                    return self._write_failed(latest, exc)
                self._went_down(exc)
                self._spool_progress(latest)
            except Exception as exc:
                return self._write_failed(latest, exc)
            with self._lock:
                self._written = latest
                self._retry_s = 0.0
            return None

    def _spool_progress(self, latest: tuple[float, float]) -> None:
        assert self.journal is not None
        self.journal.progress(*latest)

    def _write_failed(self, latest: tuple[float, float], exc: Exception) -> Exception | None:
        if not is_store_failure(exc):
            # A bug, or a value no retry will store: logged loudly, and dropped so it is not retried forever.
            logger.exception("run %s: progress %s/%s could not be written; dropped", self.run_id, *latest)
            with self._lock:
                self._written = latest
            return None
        with self._lock:
            self._retry_s = min(max(self._retry_s * 2, PROGRESS_RETRY_FIRST_S), PROGRESS_RETRY_MAX_S)
            retry_s = self._retry_s
        logger.warning("run %s: progress not written (retrying in %.2fs): %s", self.run_id, retry_s, exc)
        return exc

    def _signal_pending(self) -> None:
        """Wake the run's loop so it retries a value left pending by a failed write."""
        with self._lock:
            signal = not self._signalled
            self._signalled = True
        if signal and self.on_pending is not None:
            self.on_pending()
