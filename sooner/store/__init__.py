"""The one owner of MongoDB.

``open_store(settings)`` picks the database from ``mongo_url`` (a real MongoDB,
mongomock for unit tests, or the site's embedded nx-27017 server), creates the
indexes, and returns a :class:`Store` whose repositories (``store.jobs``,
``store.runs`` …) offer the domain operations, ``store.reads`` the read
models pages and the API show, and ``store.changes`` the change feed. Nothing
outside this package imports pymongo or mongomock, or reaches the database
object itself: repositories get their collections from
:meth:`Store.collection`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable, Iterable, TypeVar

from sooner.clock import SYSTEM_CLOCK, Clock
from sooner.errors import StoreError
from sooner.store import schema
from sooner.store.client import Retrier, make_client, redact
from sooner.store.embedded import EmbeddedServer

if TYPE_CHECKING:
    from pymongo.database import Database

    from sooner.config import Settings
    from sooner.store.output import OutputPolicy

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Store:
    """A connected database with Sooner's collections and domain operations.

    Repositories are attributes; each method documents the fields it changes.
    ``store.reads`` holds the read models of the web pages and the API
    (:mod:`sooner.store.reads`), ``store.changes`` the change feed
    (:mod:`sooner.store.changes`). ``store.retry(fn)`` runs ``fn`` with the
    transient-error policy.
    """

    def __init__(self, url: str, database: str = "sooner", *, embedded: EmbeddedServer | None = None,
                 retry_attempts: int = 4, clock: Clock = SYSTEM_CLOCK, output_policy: OutputPolicy | None = None) -> None:
        from sooner.store.changes import Changes
        from sooner.store.counters import Counters
        from sooner.store.metrics import MetricsRepo
        from sooner.store.deploys import DeployRepo, ObjectRepo
        from sooner.store.events import EventRepo
        from sooner.store.failed import FailedRuns
        from sooner.store.poison import PoisonRuns
        from sooner.store.jobs import JobRepo
        from sooner.store.limits import LimitRepo
        from sooner.store.missed import MissedRepo
        from sooner.store.notifications import NotificationRepo
        from sooner.store.webhooks import DeliveryRepo, HookRepo
        from sooner.store.output import OutputRepo
        from sooner.store.queues import QueueRepo
        from sooner.store.reads import Reads
        from sooner.store.runs import RunRepo
        from sooner.store.samples import SampleRepo
        from sooner.store.sessions import SessionRepo
        from sooner.store.users import TokenRepo, UserRepo
        from sooner.store.workers import WorkerRepo

        self.url = url
        self.embedded = embedded
        self.clock = clock  # the time repositories record when a caller gives none
        self.client = make_client(url)
        self._db: Database = self.client[database]
        on_failure = embedded.ensure_running if embedded else None
        self._retrier = Retrier(url, attempts=retry_attempts, on_failure=_quietly(on_failure))
        self.retry: Callable[[Callable[[], T]], T] = self._retrier
        self.jobs = JobRepo(self)
        self.deploys = DeployRepo(self)
        self.objects = ObjectRepo(self)
        self.runs = RunRepo(self)
        self.counters = Counters(self)  # run numbers per job (hello.sh#42)
        self.metrics = MetricsRepo(self)  # what each process counted, for /metrics (sooner.metrics)
        self.output = OutputRepo(self, output_policy)  # its retention shapes an index: see ensure_retention
        self.events = EventRepo(self)
        self.workers = WorkerRepo(self)
        self.queues = QueueRepo(self)
        self.users, self.tokens = UserRepo(self), TokenRepo(self)
        self.sessions = SessionRepo(self)
        self.missed = MissedRepo(self)  # missed ticks (the dead man's switch reads them)
        self.hooks, self.deliveries = HookRepo(self), DeliveryRepo(self)  # webhooks and their delivery log
        self.failed = FailedRuns(self)  # the Failed view: runs that failed with no further attempt
        self.poison = PoisonRuns(self)  # the poison list: HTTP job runs whose steps failed every attempt
        self.notifications = NotificationRepo(self)  # the notification outbox (sooner.runs.notifier sends)
        self.limits = LimitRepo(self)  # slots of fleet-wide concurrency limits (sooner.model.dispatch)
        self.samples = SampleRepo(self)  # monitoring samples for the workers and run pages' charts
        self.reads = Reads(self)
        self.changes = Changes(self)

    @property
    def retry_window_s(self) -> float:
        """How long one operation may spend retrying an unreachable database (see ``Retrier.window_s``)."""
        return self._retrier.window_s

    @property
    def connection_failures(self) -> int:
        """How many times the database did not answer an operation (each retry counts), since the store opened."""
        return self._retrier.failures

    @property
    def database_name(self) -> str:
        """The database's name (what another process passes as ``database`` to reach the same data)."""
        return self._db.name

    @property
    def is_mongomock(self) -> bool:
        return self.url.startswith("mongomock://")

    def collection(self, name: str):
        """A raw collection, for repositories inside this package."""
        return self._db[name]

    def collection_names(self) -> list[str]:
        """Names of the collections that exist (queues are found by their prefix)."""
        return self.retry(lambda: self._db.list_collection_names())

    def import_documents(self, collection: str, documents: Iterable[dict[str, Any]]) -> int:
        """Insert ``documents`` into one of Sooner's collections (``schema.RUNS`` …) as they are.

        For seeding test and benchmark databases only: nothing is validated
        or defaulted, and no run-service listener sees the runs. Returns how
        many documents were inserted.
        """
        if collection not in _IMPORTABLE:
            raise ValueError(f"not a Sooner collection: {collection!r}")
        batch = list(documents)
        if batch:
            self.retry(lambda: self._db[collection].insert_many(batch))
        return len(batch)

    def ping(self) -> None:
        """Fail with StoreError unless the database answers."""
        self.retry(lambda: self.client.admin.command("ping"))

    def ensure_indexes(self) -> None:
        """Create every index Sooner relies on; idempotent.

        A marker document remembers the schema version, so short-lived
        commands (a git hook, `sooner jobs`) skip the round trips once done.
        """
        meta = self._db[schema.META]
        if self.retry(lambda: meta.find_one({"_id": "schema", "version": schema.VERSION})):
            return

        def create() -> None:
            for collection, query, update in schema.BACKFILLS:
                self._db[collection].update_many(query, update)
            self.counters.number_old_runs()  # before one_run_number exists (version 9)
            for collection, indexes in schema.INDEXES.items():
                for keys, options in indexes:
                    self._db[collection].create_index(keys, **options)
            for collection, specs in schema.DROPPED_INDEXES.items():  # after their replacements exist
                dropped = [list(spec) for spec in specs]
                for index in list(self._db[collection].list_indexes()):
                    if [tuple(key) for key in index["key"].items()] in dropped:
                        self._db[collection].drop_index(index["name"])
            meta.update_one({"_id": "schema"}, {"$set": {"version": schema.VERSION}}, upsert=True)
        self.retry(create)

    def close(self) -> None:
        if not self.is_mongomock:
            self.client.close()

    def __repr__(self) -> str:
        return f"Store({redact(self.url)!r}, {self._db.name!r})"


# What test and benchmark seeding may fill directly (users and tokens go through their repositories: hashes).
_IMPORTABLE = frozenset({schema.JOBS, schema.DEPLOYS, schema.RUNS, schema.RUN_OUTPUT, schema.EVENTS, schema.WORKERS,
                         schema.BLOBS, schema.TREES})


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
    embedded = EmbeddedServer(settings.state_dir, settings.embedded_idle_stop_s)
    return embedded.ensure_running(), embedded


def open_store(settings: Settings, *, create_indexes: bool = True, retry_attempts: int = 4,
               clock: Clock = SYSTEM_CLOCK) -> Store:
    """Connect to the configured database and make sure its indexes exist."""
    url, embedded = resolve_url(settings)
    from sooner.store.output import OutputPolicy

    store = Store(url, settings.database, embedded=embedded, retry_attempts=retry_attempts, clock=clock,
                  output_policy=OutputPolicy.from_settings(settings))
    store.samples.retention_hours = settings.sample_retention_hours
    if create_indexes:
        store.ensure_indexes()
        store.output.ensure_retention()
        store.samples.ensure_retention()
    return store
