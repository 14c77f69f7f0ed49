"""Client selection from ``mongo_url`` and the one place transient errors are retried."""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, TypeVar

from pymongo import MongoClient
from pymongo.errors import AutoReconnect, ConfigurationError, ConnectionFailure, InvalidURI

from sooner.errors import StoreError, StoreUnreachable

logger = logging.getLogger(__name__)

T = TypeVar("T")

# mongomock clients live as long as the process, one per URL, so that several
# Store objects in one test process share the same in-memory data.
_mongomock_clients: dict[str, object] = {}

SERVER_SELECTION_TIMEOUT_MS = 3000


def make_client(url: str) -> MongoClient:
    """A PyMongo (or mongomock) client for the URL; does not connect yet."""
    if url.startswith("mongomock://"):
        try:
            import mongomock
        except ImportError:
            raise StoreError("mongo_url is mongomock:// but mongomock is not installed (pip install mongomock)") from None
        if url not in _mongomock_clients:
            _mongomock_clients[url] = mongomock.MongoClient(tz_aware=True)
        return _mongomock_clients[url]  # type: ignore[return-value]
    # Timeouts written in the URL win over our defaults (PyMongo lets keyword
    # arguments override the URL), so a site can shorten or lengthen them.
    query = url.split("?", 1)[1].lower() if "?" in url else ""
    timeouts: dict[str, Any] = {name: SERVER_SELECTION_TIMEOUT_MS
                                for name in ("serverSelectionTimeoutMS", "connectTimeoutMS")
                                if name.lower() + "=" not in query}
    try:
        return MongoClient(url, tz_aware=True, appname="sooner", **timeouts)
    except (ConfigurationError, InvalidURI, ValueError) as exc:
        raise StoreError(f"invalid mongo_url {redact(url)!r}: {exc}") from None


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    credentials, host = rest.rsplit("@", 1)
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


class Retrier:
    """Run a database operation, retrying transient connection errors with backoff."""

    def __init__(self, url: str, attempts: int = 4, first_delay_s: float = 0.2,
                 on_failure: Callable[[], None] | None = None) -> None:
        self.url = url
        self.attempts = attempts
        self.first_delay_s = first_delay_s
        # Called before each retry; the embedded store uses it to restart a dead server.
        self.on_failure = on_failure
        # Connection failures seen, retried or not: a caller can tell an outage happened during a call
        # that succeeded in the end (the scheduler holds lease checks after one).
        self.failures = 0

    @property
    def window_s(self) -> float:
        """About how long one operation may spend in these retries before it fails or succeeds.

        Every attempt may wait out the server-selection timeout, and the pauses between them grow.
        A process whose database came back may still be this far from its next successful call.
        """
        pauses, delay = 0.0, self.first_delay_s
        for _ in range(self.attempts - 1):
            pauses += delay
            delay = min(delay * 2.5, 5.0)
        return pauses + self.attempts * SERVER_SELECTION_TIMEOUT_MS / 1000

    def __call__(self, operation: Callable[[], T]) -> T:
        delay = self.first_delay_s
        for attempt in range(1, self.attempts + 1):
            try:
                return operation()
            except (AutoReconnect, ConnectionFailure) as exc:
                self.failures += 1
                if attempt == self.attempts:
                    raise StoreUnreachable(f"cannot reach the database at {redact(self.url)} "
                                     f"after {attempt} attempts: {_short(exc)}") from None
                logger.warning("database at %s unreachable (attempt %d/%d, retrying in %.1fs): %s",
                               redact(self.url), attempt, self.attempts, delay, _short(exc))
                time.sleep(delay)
                delay = min(delay * 2.5, 5.0)
                if self.on_failure:
                    try:
                        self.on_failure()
                    except StoreError as restart_failed:  # the embedded server did not come back (yet)
                        logger.warning("%s", restart_failed)
        raise AssertionError("unreachable")


def _short(exc: Exception) -> str:
    text = str(exc).split(", Timeout:")[0]
    return text if len(text) < 200 else text[:200] + "…"
