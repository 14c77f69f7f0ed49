"""The marshmallow schemas of ``/api/v1``: what it accepts and answers (the OpenAPI document is made from these)."""

from __future__ import annotations

from datetime import timezone

import marshmallow as ma
from marshmallow import fields as f
from marshmallow import validate as v

from sooner.model import Missed, Overlap, RunStatus
from sooner.model.notify import NotifyEvent, NotifyState
from sooner.model.waiting import WaitCode

_TIME = {"format": "date-time", "description": "ISO 8601, UTC"}


def _time(**kwargs: object) -> f.String:
    return f.String(allow_none=True, metadata=_TIME, **kwargs)  # type: ignore[arg-type]


class StrictSchema(ma.Schema):
    class Meta:
        unknown = ma.RAISE


# -- jobs ---------------------------------------------------------------------------------------------

class RetrySchema(ma.Schema):
    attempts = f.Integer(required=True)
    backoff_base_s = f.Float(required=True)
    backoff_factor = f.Float(required=True)
    max_backoff_s = f.Float(required=True)
    jitter = f.Float(required=True)


class LastRunSchema(ma.Schema):
    id = f.String(required=True)
    number = f.Integer(allow_none=True)
    status = f.String(required=True, validate=v.OneOf([s.value for s in RunStatus]))
    queued_at = _time()


class JobSchema(ma.Schema):
    name = f.String(required=True)
    kind = f.String(required=True, metadata={"description": "script, or http for a *.http.json document"})
    enabled = f.Boolean(required=True)
    deleted = f.Boolean(required=True)
    schedule = f.String(allow_none=True, metadata={"description": "cron expression (Debian cron rules)"})
    timezone = f.String(required=True)
    worker = f.String(allow_none=True)
    hooks = f.List(f.String(), required=True)
    timeout_s = f.Float(allow_none=True)
    memory_limit_mb = f.Integer(allow_none=True)
    retry = f.Nested(RetrySchema, required=True)
    overlap = f.String(required=True, validate=v.OneOf([o.value for o in Overlap]))
    missed = f.String(required=True, validate=v.OneOf([m.value for m in Missed]))
    alert_after_s = f.Float(allow_none=True)
    dedupe_window_s = f.Float(allow_none=True)
    requires = f.List(f.String(), metadata={"description": "tags a worker must all have to run it"})
    max_concurrent = f.Integer(allow_none=True, metadata={"description": "at most this many runs at once, fleet-wide"})
    notify = f.List(f.Dict(), metadata={"description": "notify rules {on, to}; targets shown without secrets"})
    commit = f.String(allow_none=True)
    updated_at = _time()
    next_fire = _time()
    last_run = f.Nested(LastRunSchema, allow_none=True)


class JobListSchema(ma.Schema):
    jobs = f.List(f.Nested(JobSchema), required=True)


class JobListQuery(ma.Schema):
    deleted = f.Boolean(load_default=False, metadata={"description": "include jobs removed from the repository"})


class RetryPatchSchema(StrictSchema):
    attempts = f.Integer()
    backoff_base_s = f.Float()
    backoff_factor = f.Float()
    max_backoff_s = f.Float()
    jitter = f.Float()


class JobPatchSchema(StrictSchema):
    """Only the fields given change; ``null`` or ``""`` clears schedule and worker, ``0`` clears the limits."""

    enabled = f.Boolean()
    schedule = f.String(allow_none=True, validate=v.Length(max=200))
    timezone = f.String(validate=v.Length(max=100))
    worker = f.String(allow_none=True, validate=v.Length(max=100))
    hooks = f.List(f.String(validate=v.Length(max=200)), validate=v.Length(max=100),
                   metadata={"description": "the whole list of event names (replaces it)"})
    timeout_s = f.Float(allow_none=True)
    memory_limit_mb = f.Integer(allow_none=True)
    overlap = f.String(validate=v.OneOf([o.value for o in Overlap]))
    missed = f.String(validate=v.OneOf([m.value for m in Missed]))
    retry = f.Nested(RetryPatchSchema)
    alert_after_s = f.Float(allow_none=True)
    dedupe_window_s = f.Float(allow_none=True)
    requires = f.List(f.String(validate=v.Length(max=100)), allow_none=True, validate=v.Length(max=20),
                      metadata={"description": "the whole list of tags a worker must have, e.g. [\"gpu\", \"eu\"]; "
                                               "null or [] clears it"})
    max_concurrent = f.Integer(allow_none=True, metadata={"description": "at most this many runs at once over all "
                                                                         "workers; null or 0 = no limit"})
    notify = f.List(f.Dict(), allow_none=True, validate=v.Length(max=20),
                    metadata={"description": 'the whole list of notify rules, e.g. [{"on": ["failure"], '
                                             '"to": ["slack://…"]}]; null or [] clears it'})


class StartRunSchema(StrictSchema):
    data = f.Raw(allow_none=True, metadata={"description": "any JSON: the run's data"})
    dedupe_key = f.String(allow_none=True, validate=v.Length(max=200))


# -- runs -----------------------------------------------------------------------------------------------

class ProgressSchema(ma.Schema):
    current = f.Float(required=True)
    max = f.Float(required=True)


class RunSchema(ma.Schema):
    id = f.String(required=True)
    number = f.Integer(allow_none=True)
    ref = f.String(required=True, metadata={"description": "the short form people type: job#number"})
    job = f.String(required=True)
    status = f.String(required=True, validate=v.OneOf([s.value for s in RunStatus]))
    trigger = f.Dict(required=True)
    data = f.Raw(allow_none=True)
    commit = f.String(allow_none=True)
    target = f.String(allow_none=True)
    worker = f.String(allow_none=True)
    attempt = f.Integer(required=True)
    progress = f.Nested(ProgressSchema, allow_none=True)
    exit_code = f.Integer(allow_none=True)
    note = f.String(allow_none=True)
    cancel_requested = f.Boolean(required=True)
    queued_at = _time()
    not_before = _time()
    started_at = _time()
    finished_at = _time()
    duration_s = f.Float(allow_none=True, metadata={"description": "set once the run has finished"})
    chain = f.String(required=True, metadata={"description": "the first attempt's id"})
    next_attempt = f.String(allow_none=True)
    relocated_to = f.String(allow_none=True)
    failed_view = f.Boolean(required=True)
    dismissed_at = _time()
    dedupe_key = f.String(allow_none=True)


class RunListSchema(ma.Schema):
    runs = f.List(f.Nested(RunSchema), required=True)
    next_cursor = f.String(allow_none=True, metadata={"description": "pass as cursor for the next page"})


class RunListQuery(ma.Schema):
    job = f.String(validate=v.Length(min=1, max=1000))
    status = f.String(validate=v.OneOf([s.value for s in RunStatus]))
    limit = f.Integer(load_default=50, validate=v.Range(1, 200))
    cursor = f.String(validate=v.Length(max=200))


class OutputQuery(ma.Schema):
    after = f.Integer(load_default=-1, validate=v.Range(-1, 2**53),
                      metadata={"description": "the last seq already read (-1: from the start)"})
    limit = f.Integer(load_default=1000, validate=v.Range(1, 5000))


class ChunkSchema(ma.Schema):
    seq = f.Integer(required=True)
    stream = f.String(required=True)
    text = f.String(required=True)


class OutputSchema(ma.Schema):
    run = f.String(required=True)
    status = f.String(required=True)
    chunks = f.List(f.Nested(ChunkSchema), required=True)
    more = f.Boolean(required=True)
    next_after = f.Integer(required=True)


class WaitingSchema(ma.Schema):
    code = f.String(required=True, validate=v.OneOf([c.value for c in WaitCode]))
    message = f.String(required=True, metadata={"description": "why it waits, in words"})
    position = f.Integer(allow_none=True, metadata={"description": "its place in the queue of its workers (1 = next)"})
    eta_s = f.Float(allow_none=True, metadata={"description": "rough seconds until it starts; null when unknown"})
    eta_text = f.String(required=True, metadata={"description": "the same for a table cell: no worker, now, ~40 s …"})


class RunWaitingSchema(ma.Schema):
    run = f.String(required=True)
    status = f.String(required=True, validate=v.OneOf([s.value for s in RunStatus]))
    waiting = f.Nested(WaitingSchema, allow_none=True,
                       metadata={"description": "null once the run started (or ended)"})


class NotificationSchema(ma.Schema):
    id = f.String(required=True)
    event = f.String(required=True, validate=v.OneOf([e.value for e in NotifyEvent]))
    target = f.String(required=True, metadata={"description": "the target without secrets"})
    state = f.String(required=True, validate=v.OneOf([s.value for s in NotifyState]))
    attempts = f.Integer(required=True)
    error = f.String(allow_none=True, metadata={"description": "why the last attempt failed"})
    created_at = _time()
    sent_at = _time()
    next_attempt_at = _time()
    text = f.String(required=True, metadata={"description": "one line, as the run page shows it"})


class RunNotificationsSchema(ma.Schema):
    run = f.String(required=True)
    notifications = f.List(f.Nested(NotificationSchema), required=True)


class UsageQuery(ma.Schema):
    since = f.AwareDateTime(default_timezone=timezone.utc,
                            metadata={"description": "only runs created at this time or later (ISO 8601)"})


class TokenUsageSchema(ma.Schema):
    token = f.String(allow_none=True, metadata={"description": "the API token's id; null: no token (a session)"})
    name = f.String(allow_none=True, metadata={"description": "the token's name, null once it was revoked"})
    runs = f.Integer(required=True)


class HookUsageSchema(ma.Schema):
    hook = f.String(allow_none=True)
    runs = f.Integer(required=True)


class JobUsageSchema(ma.Schema):
    job = f.String(required=True)
    since = _time()
    total = f.Integer(required=True)
    triggers = f.Dict(keys=f.String(), values=f.Integer(), required=True,
                      metadata={"description": "runs by trigger type (cron, manual, api, event, webhook, …)"})
    tokens = f.List(f.Nested(TokenUsageSchema), required=True, metadata={"description": "api runs by token"})
    hooks = f.List(f.Nested(HookUsageSchema), required=True, metadata={"description": "webhook runs by hook"})


# -- events, workers, deploys -------------------------------------------------------------------------------

class EmitSchema(StrictSchema):
    name = f.String(required=True, validate=v.Length(min=1, max=200))
    data = f.Raw(allow_none=True)


class EventSchema(ma.Schema):
    id = f.String(required=True)
    name = f.String(required=True)
    data = f.Raw(allow_none=True)
    source = f.Dict(allow_none=True)
    depth = f.Integer(allow_none=True)
    t = _time()
    runs = f.List(f.String(), required=True)
    note = f.String(allow_none=True)


class EventListSchema(ma.Schema):
    events = f.List(f.Nested(EventSchema), required=True)
    next_cursor = f.String(allow_none=True)


class PageQuery(ma.Schema):
    limit = f.Integer(load_default=50, validate=v.Range(1, 200))
    cursor = f.String(validate=v.Length(max=200))


class EventListQuery(PageQuery):
    name = f.String(validate=v.Length(min=1, max=200))


class WorkerSchema(ma.Schema):
    name = f.String(required=True)
    host = f.String(allow_none=True)
    health = f.String(required=True)
    heartbeat_at = _time()
    heartbeat_age_s = f.Float(allow_none=True)
    capacity = f.Integer(allow_none=True)
    tags = f.List(f.String(), required=True)
    running = f.List(f.String(), required=True)
    version = f.String(allow_none=True)
    speed = f.Float(allow_none=True, metadata={"description": "measured speed relative to the fleet (1.0 = average; "
                                                              "null = not measured yet)"})


class WorkerListSchema(ma.Schema):
    workers = f.List(f.Nested(WorkerSchema), required=True)


class DeploySchema(ma.Schema):
    commit = f.String(required=True)
    branch = f.String(allow_none=True)
    author = f.String(allow_none=True)
    message = f.String(allow_none=True)
    time = _time()
    created = f.List(f.String(), required=True)
    updated = f.List(f.String(), required=True)
    removed = f.List(f.String(), required=True)


class DeployListSchema(ma.Schema):
    deploys = f.List(f.Nested(DeploySchema), required=True)
    next_cursor = f.String(allow_none=True)
