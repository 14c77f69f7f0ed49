"""Properties of the queue-filter builder (issue #9): whatever a user types, it is refused with a message or
becomes a query made only of the builder's own operators, on fields the whitelist allows, with literal text."""

from __future__ import annotations

import re
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sooner.store.queue_filters import PARAMETERS, QueueFilterError, contains_pattern, is_field, parse_view

ALLOWED_OPERATORS = {"$in", "$nin", "$regex", "$gt", "$gte", "$lt", "$lte"}
OPS = ["eq", "ne", "contains", "gt", "gte", "lt", "lte"]

# Typed text: anything, with a bias towards what an attacker would try.
hostile = st.one_of(st.text(max_size=40), st.sampled_from(
    ["$where", "$gt", "{\"$ne\": null}", "data.$x", "data.a.b", "data..a", "data.a ", "_id", "status", "createdAt",
     ".*", "(a+)+$", "true", "null", "1e309", "NaN", "-0", "2026-13-40", "\\", "data.名前"]))
field = st.one_of(hostile, st.sampled_from(["data.name", "data.count", "status", "_id", "createdAt", "data"]))
rows = st.lists(st.tuples(field, st.one_of(st.sampled_from(OPS), hostile), hostile), max_size=4)
extra = st.lists(st.tuples(st.sampled_from(list(PARAMETERS) + ["$where", "filter"]), hostile), max_size=3)


def operators_and_fields(query: Any, path: str = "") -> list[tuple[str, str]]:
    """Every (key, where) in a query document, recursively."""
    found = []
    if isinstance(query, dict):
        for key, value in query.items():
            found.append((key, path))
            found += operators_and_fields(value, key)
    elif isinstance(query, list):
        for item in query:
            found += operators_and_fields(item, path)
    return found


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=rows, extra=extra)
def test_any_typed_filter_is_refused_or_builds_only_whitelisted_operators(rows, extra):
    pairs = [(name, value) for f, op, v in rows for name, value in (("f", f), ("op", op), ("v", v))] + extra
    try:
        view = parse_view(pairs)
    except QueueFilterError as exc:
        assert str(exc)  # a message for the user, never a traceback
        return
    for key, _ in operators_and_fields(view.query):
        if key.startswith("$"):
            assert key in ALLOWED_OPERATORS, (key, view.query)
        else:
            assert is_field(key), (key, view.query)


@given(st.text(min_size=1, max_size=60))
def test_contains_matches_the_typed_text_literally(text):
    # Whatever regex syntax it holds, the typed text is matched as itself, inside other text.
    assert re.compile(contains_pattern(text)).search(f"x{text}y")
