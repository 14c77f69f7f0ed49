"""The one owner of MongoDB.

``open_store(settings)`` picks the database from ``mongo_url`` (a real MongoDB,
mongomock for unit tests, or the site's embedded nx-27017 server), creates the
indexes, and returns a :class:`Store` whose repositories (``store.jobs``,
``store.runs`` …) offer the domain operations. Nothing outside this package
imports pymongo or mongomock.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable, TypeVar

from sooner.errors import StoreError
from sooner.store import schema
from sooner.store.client import Retrier, make_client, redact
from sooner.store.embedded import EmbeddedServer

if TYPE_CHECKING:
    from pymongo.database import Database

    from sooner.config import Settings

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Store:
    """A connected database with Sooner's collections and domain operations.

    Repositories are attributes; each method documents the fields it changes.
    ``store.retry(fn)`` runs ``fn`` with the transient-error policy.
    """

    def __init__(self, url: str, database: str = "sooner", *, embedded: EmbeddedServer | None = None,
                 retry_attempts: int = 4) -> None:
        from sooner.store.deploys import DeployRepo, ObjectRepo
        from sooner.store.events import EventRepo
        from sooner.store.jobs import JobRepo
        from sooner.store.output import OutputRepo
        from sooner.store.queues import QueueRepo
        from sooner.store.runs import RunRepo
        from sooner.store.users import TokenRepo, UserRepo
        from sooner.store.workers import WorkerRepo

        self.url = url
        self.embedded = embedded
        self.client = make_client(url)
        self.db: Database = self.client[database]
        on_failure = embedded.ensure_running if embedded else None
        self.retry: Callable[[Callable[[], T]], T] = Retrier(url, attempts=retry_attempts,
                                                             on_failure=_quietly(on_failure))
        self.jobs = JobRepo(self)
        self.deploys = DeployRepo(self)
        self.objects = ObjectRepo(self)
        self.runs = RunRepo(self)
        self.output = OutputRepo(self)
        self.events = EventRepo(self)
        self.workers = WorkerRepo(self)
        self.queues = QueueRepo(self)
        self.users, self.tokens = UserRepo(self), TokenRepo(self)

    @property
    def is_mongomock(self) -> bool:
        return self.url.startswith("mongomock://")

    def collection(self, name: str):
        """A raw collection, for repositories inside this package."""
        return self.db[name]

    def ping(self) -> None:
        """Fail with StoreError unless the database answers."""
        self.retry(lambda: self.client.admin.command("ping"))

    def ensure_indexes(self) -> None:
        """Create every index Sooner relies on; idempotent.

        A marker document remembers the schema version, so short-lived
        commands (a git hook, `sooner jobs`) skip the round trips once done.
        """
        meta = self.db[schema.META]
        if self.retry(lambda: meta.find_one({"_id": "schema", "version": schema.VERSION})):
            return

        def create() -> None:
            for collection, indexes in schema.INDEXES.items():
                for keys, options in indexes:
                    self.db[collection].create_index(keys, **options)
            meta.update_one({"_id": "schema"}, {"$set": {"version": schema.VERSION}}, upsert=True)
        self.retry(create)

    def close(self) -> None:
        if not self.is_mongomock:
            self.client.close()

    def __repr__(self) -> str:
        return f"Store({redact(self.url)!r}, {self.db.name!r})"


def _quietly(action: Callable[[], object] | None) -> Callable[[], None] | None:
    if action is None:
        return None

    def run() -> None:
        try:
            action()
        except StoreError as exc:
            logger.warning("could not restart the embedded database: %s", exc)
    return run


def resolve_url(settings: Settings) -> tuple[str, EmbeddedServer | None]:
    """The database URL for the settings, starting the embedded server if needed."""
    if settings.mongo_url:
        return settings.mongo_url, None
    embedded = EmbeddedServer(settings.state_dir)
    return embedded.ensure_running(), embedded


def open_store(settings: Settings, *, create_indexes: bool = True, retry_attempts: int = 4) -> Store:
    """Connect to the configured database and make sure its indexes exist."""
    url, embedded = resolve_url(settings)
    store = Store(url, settings.database, embedded=embedded, retry_attempts=retry_attempts)
    if create_indexes:
        store.ensure_indexes()
    return store
