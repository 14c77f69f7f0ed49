"""What a script's calls do, whichever channel (stderr line or socket) carried them.

``progress`` updates the run's progress bar; database writes are throttled to
one per ``throttle_s`` per run, and the newest value is always written in the
end (:meth:`CallHandler.flush_progress`). ``emit`` stores an event and starts
the hooked jobs, one level deeper in the chain than the emitting run.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from sooner.errors import ProtocolError
from sooner.worker.methods import METHODS, MethodRegistry
from sooner.worker.protocol import Call

if TYPE_CHECKING:
    from sooner.model import Run
    from sooner.runs.service import RunService

logger = logging.getLogger(__name__)

PROGRESS_THROTTLE_S = 0.05


class CallHandler:
    """Apply one run's calls. Thread-safe: the socket server and the output reader share it.

    ``registry`` holds the methods this run offers; each call is dispatched to
    its method's handler, which calls back :meth:`progress` or :meth:`emit`.

    ``on_pending`` is called (without arguments) when a throttled progress
    value waits to be written, so the run's loop can wake up and write it at
    :meth:`progress_due`.
    """

    def __init__(self, service: RunService, run: Run, *, throttle_s: float = PROGRESS_THROTTLE_S,
                 on_pending: Callable[[], None] | None = None, registry: MethodRegistry = METHODS) -> None:
        self.service = service
        self.store = service.store
        self.registry = registry  # the socket server and stderr reader parse calls against it too
        self.run_id = run.id
        self.job = run.job
        self.depth = run.depth
        self.throttle_s = throttle_s
        self.on_pending = on_pending
        self.calls = 0
        self._latest: tuple[float, float] | None = None
        self._written: tuple[float, float] | None = None
        self._last_write = float("-inf")
        self._signalled = False  # on_pending was called for the value waiting now
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()

    def __call__(self, call: Call) -> Any:
        """Handle a validated call through its method's declaration (see :mod:`sooner.worker.methods`).

        Raises ProtocolError for a call the method refuses (an event name the
        store rejects; UnknownMethod for a name this handler's registry lacks).
        """
        self.calls += 1
        return self.registry.get(call.method).handle(self, call.args)

    def progress(self, current: float, maximum: float) -> None:
        with self._lock:
            self._latest = (current, maximum)
            write_now = time.monotonic() - self._last_write >= self.throttle_s
            signal = not write_now and not self._signalled
            if signal:
                self._signalled = True
        if write_now:
            self.flush_progress(force=True)
        elif signal and self.on_pending is not None:
            self.on_pending()

    def progress_due(self) -> float | None:
        """The monotonic time at which a waiting progress value should be written, or None."""
        with self._lock:
            if self._latest is None or self._latest == self._written:
                return None
            return self._last_write + self.throttle_s

    def flush_progress(self, force: bool = False) -> None:
        """Write the newest progress if it is not stored yet (and the throttle allows, unless ``force``)."""
        with self._write_lock:
            with self._lock:
                latest = self._latest
                if latest is None or latest == self._written:
                    return
                if not force and time.monotonic() - self._last_write < self.throttle_s:
                    return
                self._last_write = time.monotonic()
                self._signalled = False
            self.store.runs.set_progress(self.run_id, latest[0], latest[1])
            with self._lock:
                self._written = latest

    def emit(self, event: str, data: Any = None) -> dict[str, Any]:
        try:
            stored = self.service.emit(event, data, source={"type": "run", "run": self.run_id, "job": self.job},
                                       depth=self.depth + 1)
        except ValueError as exc:  # an invalid event name (InvalidJobSetting is a ValueError)
            raise ProtocolError(str(exc)) from None
        result: dict[str, Any] = {"event": stored["_id"], "runs": stored.get("runs", [])}
        if stored.get("note"):
            result["note"] = stored["note"]
        return result
