"""The marshmallow schemas of ``/api/v1``: what it accepts and answers (the OpenAPI document is made from these)."""

from __future__ import annotations

import marshmallow as ma
from marshmallow import fields as f
from marshmallow import validate as v

from sooner.model import Missed, Overlap, RunStatus

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
