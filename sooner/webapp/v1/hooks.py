"""``/api/v1/hooks``: the webhooks and their delivery log, for admins (hooks are made with the CLI or on
``/settings/hooks``; a hook's secret is never shown again after it is made)."""

from __future__ import annotations

from typing import Any

import marshmallow as ma
from flask.typing import ResponseReturnValue
from marshmallow import fields as mf
from marshmallow import validate as mv

from sooner.model.webhook import Hook
from sooner.store.webhooks import LOG_KEEP
from sooner.webapp.context import is_admin, web_store
from sooner.webapp.formatting import iso
from sooner.webapp.v1.common import blp, refuse

_TIME = {"format": "date-time", "description": "ISO 8601, UTC"}


class HookSchema(ma.Schema):
    name = mf.String(required=True)
    provider = mf.String(required=True)
    job = mf.String(required=True)
    events = mf.List(mf.String(), required=True, metadata={"description": "empty: any event but ping"})
    branches = mf.List(mf.String(), required=True, metadata={"description": "empty: any branch"})
    path = mf.String(required=True, metadata={"description": "where the provider sends deliveries (POST)"})
    created_at = mf.String(allow_none=True, metadata=_TIME)
    created_by = mf.String(allow_none=True)


class HookListSchema(ma.Schema):
    hooks = mf.List(mf.Nested(HookSchema), required=True)


class DeliverySchema(ma.Schema):
    t = mf.String(allow_none=True, metadata=_TIME)
    delivery = mf.String(allow_none=True, metadata={"description": "the sender's delivery id"})
    state = mf.String(required=True, metadata={"description": "claimed, accepted, ignored or refused"})
    status = mf.Integer(allow_none=True, metadata={"description": "the HTTP status the sender got"})
    reason = mf.String(allow_none=True)
    event = mf.String(allow_none=True)
    branch = mf.String(allow_none=True)
    run = mf.String(allow_none=True, metadata={"description": "the run it started"})
    address = mf.String(allow_none=True)
    duplicates = mf.Integer(required=True, metadata={"description": "later arrivals of the same delivery"})
    last_duplicate_at = mf.String(allow_none=True, metadata=_TIME)


class DeliveryListSchema(ma.Schema):
    hook = mf.String(required=True)
    deliveries = mf.List(mf.Nested(DeliverySchema), required=True)


class DeliveryQuery(ma.Schema):
    limit = mf.Integer(load_default=50, validate=mv.Range(1, LOG_KEEP))


def hook_body(hook: Hook) -> dict[str, Any]:
    """A hook without its secret."""
    return {"name": hook.name, "provider": hook.provider, "job": hook.job, "events": list(hook.events),
            "branches": list(hook.branches), "path": f"/hooks/{hook.provider}/{hook.name}",
            "created_at": iso(hook.created_at) or None, "created_by": hook.created_by}


def delivery_body(doc: dict) -> dict[str, Any]:
    def text(key: str) -> str | None:
        value = doc.get(key)
        return None if value is None else str(value)
    return {"t": iso(doc.get("t")) or None, "delivery": text("delivery"), "state": str(doc.get("state") or ""),
            "status": doc.get("status") if isinstance(doc.get("status"), int) else None, "reason": text("reason"),
            "event": text("event"), "branch": text("branch"), "run": text("run"), "address": text("address"),
            "duplicates": int(doc.get("duplicates") or 0),
            "last_duplicate_at": iso(doc.get("last_duplicate_at")) or None}


def _admins_only() -> ResponseReturnValue | None:
    return None if is_admin() else refuse(403, "this needs the admin role")


@blp.route("/hooks")
@blp.response(200, HookListSchema)
def list_hooks() -> ResponseReturnValue:
    """Every webhook (admins)."""
    if (refusal := _admins_only()) is not None:
        return refusal
    return {"hooks": [hook_body(h) for h in web_store().hooks.all()]}


@blp.route("/hooks/<name>/deliveries")
@blp.arguments(DeliveryQuery, location="query")
@blp.response(200, DeliveryListSchema)
def list_deliveries(query: dict[str, Any], name: str) -> ResponseReturnValue:
    """The hook's newest deliveries, newest first (admins)."""
    if (refusal := _admins_only()) is not None:
        return refusal
    store = web_store()
    hook = store.hooks.get(name)
    if hook is None:
        return refuse(404, f"no hook named {name[:64]!r}")
    log = store.deliveries.log(hook.name, query["limit"])
    return {"hook": hook.name, "deliveries": [delivery_body(d) for d in log]}
