"""Every error Sooner raises on purpose derives from :class:`SoonerError`.

The CLI turns a ``SoonerError`` into one clear line and exit code 1; any other
exception reaching the user is a bug.
"""

from __future__ import annotations


class SoonerError(Exception):
    """Root of all errors Sooner raises deliberately."""


class ConfigError(SoonerError):
    """The configuration file, an environment override or an option is invalid."""

    def __init__(self, message: str, *, source: str | None = None, key: str | None = None) -> None:
        self.source = source
        self.key = key
        where = ", ".join(part for part in (source, f"key {key!r}" if key else None) if part)
        super().__init__(f"{where}: {message}" if where else message)


class SiteNotFound(ConfigError):
    """No site (directory with config.json) could be found."""


class StoreError(SoonerError):
    """The database could not be reached or refused an operation."""


class StoreUnreachable(StoreError):
    """The database did not answer (after the store's retries): an outage, not a refusal.

    Code that can wait for the database to come back (a worker's outage
    journal, ``sooner logs --follow``, the web pages) tells this apart from a
    refused operation, which waiting would not fix.
    """


class DeployError(SoonerError):
    """A pushed commit could not be deployed; nothing was applied."""


class ScheduleError(SoonerError, ValueError):
    """A cron expression or timezone is invalid."""


class JobNotFound(SoonerError, LookupError):
    """No job with the given name exists."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"no job named {name!r} (see `sooner jobs`)")


class RunNotFound(SoonerError, LookupError):
    """No run with the given id (or other run reference, see sooner.model.run_ref) exists."""

    def __init__(self, run_id: str, detail: str | None = None) -> None:
        self.run_id = run_id
        super().__init__(f"no run with id {run_id!r}{f': {detail}' if detail else ''} (see `sooner runs`)")


class RunError(SoonerError):
    """A run could not be started, cancelled or recorded."""


class WorkerError(SoonerError):
    """A worker could not start (e.g. its name is taken by a live worker)."""


class ProtocolError(SoonerError, ValueError):
    """A script sent a malformed protocol call (stderr line or JSON-RPC request)."""


class AuthError(SoonerError):
    """Login, token or permission check failed."""
