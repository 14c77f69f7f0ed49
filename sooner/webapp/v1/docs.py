"""``/api/v1/docs``: the API reference as an HTML page, rendered from the generated OpenAPI document."""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, current_app, render_template
from flask.typing import ResponseReturnValue

# A plain blueprint: the page is not an API operation, so it stays out of the document.
bp = Blueprint("v1_docs", __name__)

METHODS = ("get", "post", "put", "patch", "delete")


def operations(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """The spec's operations in path order, each with what the page shows."""
    found = []
    for path, item in spec.get("paths", {}).items():
        for method in METHODS:
            operation = item.get(method)
            if operation is None:
                continue
            body = (operation.get("requestBody") or {}).get("content", {}).get("application/json", {}).get("schema")
            found.append({"method": method.upper(), "path": path, "summary": operation.get("summary", ""),
                          "description": operation.get("description", ""),
                          "parameters": item.get("parameters", []) + operation.get("parameters", []),
                          "body": _ref_name(body), "responses": [
                              {"status": status, "description": answer.get("description", ""),
                               "schema": _ref_name((answer.get("content") or {}).get("application/json", {})
                                                   .get("schema"))}
                              for status, answer in operation.get("responses", {}).items()]})
    return found


def _ref_name(schema: dict[str, Any] | None) -> str | None:
    if not schema:
        return None
    ref = schema.get("$ref", "")
    return ref.rsplit("/", 1)[-1] if ref else None


@bp.get("/api/v1/docs")
def docs() -> ResponseReturnValue:
    """The reference page (not part of the document itself)."""
    spec = current_app.extensions["sooner_v1_api"].spec.to_dict()
    schemas = {name: json.dumps(schema, indent=2) for name, schema in spec.get("components", {}).get("schemas", {})
               .items()}
    return render_template("api_v1_docs.html", spec=spec, operations=operations(spec), schemas=schemas)
