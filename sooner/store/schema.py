"""Collection names and indexes, and the filter shape that lets the embedded server use them.

Indexes are created idempotently at start (``create_index`` is a no-op when
the index exists). Every column the web UI sorts by gets a single-field index,
because the embedded server only uses those for sorts (see docs/architecture.md).
"""

from __future__ import annotations

from typing import Any

from pymongo import ASCENDING, DESCENDING

from sooner.model import BUSY, RunStatus

# Bump when INDEXES change, so existing databases get the new indexes.
VERSION = 12

META = "sooner_meta"
JOBS = "jobs"
DEPLOYS = "deploys"
BLOBS = "blobs"
TREES = "trees"
RUNS = "runs"
RUN_OUTPUT = "run_output"
EVENTS = "events"
WORKERS = "workers"
USERS = "users"
TOKENS = "tokens"
SESSIONS = "sessions"
MISSED_TICKS = "missed_ticks"
COUNTERS = "counters"
HOOKS = "hooks"
HOOK_DELIVERIES = "hook_deliveries"
NOTIFICATIONS = "notifications"
METRICS = "metrics"
LIMITS = "limits"  # concurrency limit slots (sooner.store.limits): found by _id only, no index
SAMPLES = "samples"
QUEUE_PREFIX = "queue_"



def eq(value: Any) -> dict[str, Any]:
    """An equality on a scalar field, written so that the embedded server answers it from an index.

    nx-27017's neosqlite writes a bare ``{field: value}`` as ``= value OR <an array holding
    value>`` unless it finds an index named after the field, and always so beside a date
    condition: SQLite cannot use an index for that ``OR`` and reads every row (the lease check
    took 100 ms at 30,000 runs, 2 ms so). ``{"$eq": value}`` is plain ``=``. On MongoDB the two
    are the same filter; on the embedded server ``$eq`` does not look inside arrays, so use it
    for scalar fields only (``status``, ``job``, ``name`` ...). ``tests/test_index_use.py`` holds
    the repeated queries to it.
    """
    return {"$eq": value}


# collection -> list of (keys, options)
INDEXES: dict[str, list[tuple[list[tuple[str, int]], dict]]] = {
    JOBS: [
        ([("enabled", ASCENDING)], {}),
        ([("hooks", ASCENDING)], {}),
        ([("deleted", ASCENDING)], {}),
    ],
    DEPLOYS: [([("time", DESCENDING)], {})],
    RUNS: [
        ([("status", ASCENDING), ("queued_at", ASCENDING)], {}),
        ([("job", ASCENDING), ("queued_at", DESCENDING)], {}),
        # The embedded server uses only single-field indexes for equality
        # filters too: a job's run history took 12 ms without this, 1 ms with it.
        ([("job", ASCENDING)], {}),
        ([("queued_at", DESCENDING)], {}),
        ([("worker", ASCENDING), ("status", ASCENDING)], {}),
        ([("lease_until", ASCENDING)], {}),
        # Firing is idempotent across schedulers: one run per (job, moment, time trigger kind),
        # so two kinds firing at one moment both get their run. fire_kind is always set (SQLite,
        # under nx-27017, takes missing values in a unique index as all distinct).
        ([("job", ASCENDING), ("scheduled_for", ASCENDING), ("fire_kind", ASCENDING)],
         {"unique": True, "partialFilterExpression": {"scheduled_for": {"$type": "date"}},
          "name": "one_run_per_fire"}),
        # Attempt chains (store.reads.chain: one equality on chain) and the Failed view (store.failed:
        # one equality on failed_view, set only while a run is in the view).
        ([("chain", ASCENDING)], {}),
        ([("failed_view", ASCENDING)], {}),
        # Dedupe keys (RunRepo.insert_holding_key): at most one run of a job holds a key. Only runs
        # that hold one have the field (a missing field is distinct on nx-27017, excluded by the
        # filter on MongoDB); the key alone is indexed too, for the embedded server's lookups.
        ([("job", ASCENDING), ("dedupe_key", ASCENDING)],
         {"unique": True, "partialFilterExpression": {"dedupe_key": {"$exists": True}}, "name": "one_run_per_key"}),
        ([("dedupe_key", ASCENDING)], {}),
        # Run numbers (hello.sh#42, store.counters): one run per (job, number). Runs stored before numbers
        # have none until Counters.number_old_runs gives them one (distinct on nx-27017, excluded on MongoDB).
        ([("job", ASCENDING), ("number", ASCENDING)],
         {"unique": True, "partialFilterExpression": {"number": {"$exists": True}}, "name": "one_run_number"}),
    ],
    # run alone too: the embedded server uses only single-field indexes for equality filters, and
    # without it a page of one run's output took 110 ms at 100,000 chunks (3 ms with it).
    RUN_OUTPUT: [([("run", ASCENDING), ("seq", ASCENDING)], {"unique": True}), ([("run", ASCENDING)], {})],
    # source.run: what a run emitted (store.reads.emitted_events), one equality on the emitting run's id.
    EVENTS: [([("t", DESCENDING)], {}), ([("name", ASCENDING)], {}), ([("source.run", ASCENDING)], {})],
    WORKERS: [([("heartbeat_at", DESCENDING)], {})],
    TOKENS: [([("user", ASCENDING)], {})],
    # Web sessions: found by _id (the hash of the cookie's id), ended together by user; the
    # database deletes each once past its absolute expiry (the web checks both lifetimes itself).
    SESSIONS: [([("user", ASCENDING)], {}), ([("expires_at", ASCENDING)], {"expireAfterSeconds": 0})],
    # Missed ticks: a job's page lists them by scheduled_for (job and sort key each indexed alone, for
    # the embedded server); the dead man's switch asks by scheduled_for; retention prunes by recorded_at.
    MISSED_TICKS: [([("job", ASCENDING)], {}), ([("scheduled_for", DESCENDING)], {}),
                   ([("recorded_at", ASCENDING)], {})],
    # Webhook delivery log (store.deliveries): a hook's newest attempts (hook and sort key each alone);
    # an accepted delivery's _id is <hook>/<delivery id>, so the unique _id makes duplicates one run.
    HOOK_DELIVERIES: [([("hook", ASCENDING)], {}), ([("t", DESCENDING)], {})],
    # The notification outbox (store.notifications): the notifier lists pending entries by state (due first,
    # by not_before), suppressed ones a summary has not counted by summary_due (set only until then), the run
    # page a run's by run, the rate limit a target's newest sent by target_key and sent_at, retention prunes
    # by created_at (each alone, for the embedded server). _id = <run>/<target digest>: idempotent.
    NOTIFICATIONS: [([("state", ASCENDING)], {}), ([("not_before", ASCENDING)], {}), ([("summary_due", ASCENDING)], {}),
                    ([("run", ASCENDING)], {}), ([("target_key", ASCENDING)], {}), ([("sent_at", DESCENDING)], {}),
                    ([("created_at", ASCENDING)], {})],
    # Monitoring samples (store.samples): a chart reads one series (kind:key) newest first by t; the index
    # on t (retention) is SAMPLE_AGE, shaped by SampleRepo.ensure_retention like run_output's.
    SAMPLES: [([("series", ASCENDING)], {})],
}

# run_output's index on t (retention): its options follow the output_retention_days setting, so
# OutputRepo.ensure_retention creates and changes it at store open, not INDEXES.
RUN_OUTPUT_AGE: list[tuple[str, int]] = [("t", ASCENDING)]
# samples' index on t: a TTL index of sample_retention_hours on MongoDB, plain elsewhere (SampleRepo.ensure_retention).
SAMPLE_AGE: list[tuple[str, int]] = [("t", ASCENDING)]

# Changes to existing documents, applied (idempotently) before the indexes are created:
# (collection, filter, update). Version 3: cron runs of version 2 get the fire_kind the
# one_run_per_fire index needs, so a tick fired before an upgrade is not fired again.
BACKFILLS: list[tuple[str, dict, dict]] = [
    # (not {"$type": "date"}: nx-27017 matches nothing with it)
    (RUNS, {"scheduled_for": {"$exists": True, "$ne": None}, "fire_kind": {"$exists": False}},
     {"$set": {"fire_kind": "cron"}}),
    # Runs active before has_waiters existed may have waiting runs behind them (version 11).
    (RUNS, {"status": {"$in": RunStatus.values(BUSY)}, "has_waiters": {"$exists": False}},
     {"$set": {"has_waiters": True}}),
]

# Indexes of earlier versions, dropped once their replacements exist: collection -> key specs
# (by keys, not by name: nx-27017 names indexes itself). Version 2's one_run_per_tick was
# unique on (job, scheduled_for) and would still refuse a second time trigger's run.
DROPPED_INDEXES: dict[str, list[list[tuple[str, int]]]] = {RUNS: [[("job", ASCENDING), ("scheduled_for", ASCENDING)]]}

QUEUE_INDEXES: list[tuple[list[tuple[str, int]], dict]] = [
    ([("status", ASCENDING)], {}),
    ([("createdAt", ASCENDING)], {}),
    ([("updatedAt", ASCENDING)], {}),
]
