"""``/api/v1/poison``: HTTP job runs whose steps failed every attempt; retry one (a new attempt) or discard it.

GET    /api/v1/poison?job=&limit=          the list, newest end first
POST   /api/v1/poison/{run}/retry           a new attempt now (RunService.retry); the run leaves the list  [admin]
DELETE /api/v1/poison/{run}                 discard: off the list, its status stays poison             [admin]

A run that is not on the list (not poison, retried or discarded already) is a 409 saying why.
"""

from __future__ import annotations

from typing import Any

import marshmallow as ma
from flask.typing import ResponseReturnValue
from marshmallow import fields as f
from marshmallow import validate as v

from sooner.errors import SoonerError
from sooner.model import Run
from sooner.model.token import ApiAction
from sooner.webapp.context import user_name, web_runs, web_store
from sooner.webapp.v1 import schemas as s
from sooner.webapp.v1.common import allowed, blp, refuse
from sooner.webapp.v1.runs import run_body


class PoisonQuery(ma.Schema):
    job = f.String(validate=v.Length(min=1, max=1000))
    limit = f.Integer(load_default=100, validate=v.Range(1, 1000))


class PoisonListSchema(ma.Schema):
    runs = f.List(f.Nested(s.RunSchema), required=True)
    total = f.Integer(required=True, metadata={"description": "how many runs are on the list (matching job)"})
    truncated = f.Boolean(required=True, metadata={"description": "more poison runs exist than one read takes"})


class PoisonRetrySchema(ma.Schema):
    run = f.Nested(s.RunSchema, required=True, metadata={"description": "the new attempt"})
    retried = f.String(required=True, metadata={"description": "the poison run's id"})


class PoisonDiscardSchema(ma.Schema):
    id = f.String(required=True)
    message = f.String(required=True)


@blp.route("/poison")
@blp.arguments(PoisonQuery, location="query")
@blp.response(200, PoisonListSchema)
def list_poison(query: dict[str, Any]) -> ResponseReturnValue:
    """The poison list: runs whose HTTP steps failed every attempt, not retried or discarded yet."""
    runs, total, truncated = web_store().poison.page(job=query.get("job"), limit=query["limit"])
    return {"runs": [run_body(run) for run in runs], "total": total, "truncated": truncated}


@blp.route("/poison/<path:run_id>/retry", methods=["POST"])
@blp.response(201, PoisonRetrySchema)
def retry_poison(run_id: str) -> ResponseReturnValue:
    """Queue a new attempt of a poison run now; the run leaves the list."""
    run = web_store().runs.get(run_id)
    if (refusal := _refusal(run)) is not None:
        return refusal
    try:
        new = web_runs().retry(run.id, by=user_name(), source="api")
    except SoonerError as exc:  # retried meanwhile
        return refuse(409, str(exc))
    return {"run": run_body(new), "retried": run.id}, 201


@blp.route("/poison/<path:run_id>", methods=["DELETE"])
@blp.response(200, PoisonDiscardSchema)
def discard_poison(run_id: str) -> ResponseReturnValue:
    """Discard a poison run: it leaves the list, its status stays ``poison``."""
    run = web_store().runs.get(run_id)
    if (refusal := _refusal(run)) is not None:
        return refusal
    (result,) = web_store().poison.discard([run.id], by=user_name())
    if not result.ok:
        return refuse(409, f"run {run.id}: {result.message}")
    return {"id": result.id, "message": result.message}


def _refusal(run: Run) -> ResponseReturnValue | None:
    return allowed(ApiAction.ADMIN, [run.job])
