"""The Queues page's query string → a safe MongoDB query (pure: no database, no Flask).

Field names and operators come only from whitelists; whatever a user types
becomes a *value* (a string, number, date or escaped regex), never a key or an
operator. So ``{"$gt": ""}`` typed into a filter box is looked for literally,
``f=data.$where`` is refused, and a contains-filter is ``re.escape``d.

Parameters (all optional; anything else is refused with :class:`QueueFilterError`):

``status``          repeatable; entries with any of these statuses
``f``/``op``/``v``  repeatable triples: field, operator (:data:`OPERATORS`), value
``q``               search: case-insensitive substring of any text column
``sort``/``dir``    a column and ``asc``/``desc`` (default: ``createdAt`` ``desc``)
``page``/``per``    1-based page and page size (:data:`PAGE_SIZES`); pages stop at :data:`MAX_ROWS`

Fields are ``status``, ``createdAt``, ``updatedAt``, ``_id``, ``data`` (when an
entry's data is not an object) and ``data.<key>`` for flat keys of 1-64 word
characters, '-' or spaces — keys with dots, '$', quotes or brackets cannot be
filtered or sorted on (the embedded server puts field paths into SQL text).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping
from urllib.parse import urlencode

from bson import ObjectId

from sooner.errors import SoonerError

OPERATORS: dict[str, str] = {"eq": "=", "ne": "≠", "contains": "contains", "gt": ">", "gte": "≥", "lt": "<",
                             "lte": "≤"}
RANGE_OPERATORS = {"gt": "$gt", "gte": "$gte", "lt": "$lt", "lte": "$lte"}
DATE_FIELDS = ("createdAt", "updatedAt")
TOP_FIELDS = ("_id", "status", *DATE_FIELDS)
PARAMETERS = ("status", "f", "op", "v", "q", "sort", "dir", "page", "per")
SINGLE_PARAMETERS = ("q", "sort", "dir", "page", "per")
PAGE_SIZES = (20, 50, 100, 200)
DEFAULT_PER = 50
DEFAULT_SORT = "createdAt"
MAX_ROWS = 10_000  # deepest row reachable by paging; beyond it, reverse the sort or filter
MAX_FILTERS = 10
MAX_STATUSES = 20
MAX_VALUE_CHARS = 200
MAX_SEARCH_CHARS = 100
MAX_SEARCH_FIELDS = 12
MAX_COLUMNS = 30

_DATA_KEY = re.compile(r"^\w[\w\- ]{0,63}$")
_NUMBER = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?$")
_INT64 = (-(2 ** 63), 2 ** 63 - 1)


class QueueFilterError(SoonerError, ValueError):
    """A query-string parameter of the Queues page is unknown, malformed or not allowed."""


@dataclass(frozen=True)
class Column:
    """A column of the queue table: a top-level field or a flat ``data`` key."""

    field: str  # "status", "createdAt", "data.url", "data" …
    kind: str  # "string", "number", "date", "bool", "object", "id", "mixed", "null"
    seen: int = 0  # in how many sampled entries it has a value

    @property
    def label(self) -> str:
        return self.field[5:] if self.field.startswith("data.") else self.field

    @property
    def usable(self) -> bool:
        """Whether it can be filtered on (a safe name, scalar values)."""
        return is_field(self.field) and self.kind != "object"

    @property
    def sortable(self) -> bool:
        return self.usable and self.field not in ("_id", "data")


@dataclass(frozen=True)
class Condition:
    """One parsed filter row, as typed (for showing the form again)."""

    field: str
    op: str
    value: str


@dataclass(frozen=True)
class QueueView:
    """What the page shows: the MongoDB filter, search branches, sort and page."""

    statuses: tuple[str, ...] = ()
    conditions: tuple[Condition, ...] = ()
    search: str = ""
    sort: str = DEFAULT_SORT
    descending: bool = True
    page: int = 1
    per: int = DEFAULT_PER
    query: dict = field(default_factory=dict)
    search_branches: tuple[dict, ...] = ()

    @property
    def skip(self) -> int:
        return (self.page - 1) * self.per

    @property
    def sort_spec(self) -> tuple[str, int]:
        return (self.sort, -1 if self.descending else 1)

    @property
    def filtered(self) -> bool:
        return bool(self.statuses or self.conditions or self.search)

    def params(self, **changes: Any) -> list[tuple[str, str]]:
        """The query-string pairs for this view, with ``changes`` (sort, dir, page, per, status …) applied."""
        values: dict[str, Any] = {"status": list(self.statuses), "q": self.search, "sort": self.sort,
                                  "dir": "desc" if self.descending else "asc", "page": self.page, "per": self.per}
        values.update(changes)
        pairs: list[tuple[str, str]] = [("status", s) for s in values["status"]]
        for condition in values.get("conditions", self.conditions):
            pairs += [("f", condition.field), ("op", condition.op), ("v", condition.value)]
        defaults = {"q": "", "sort": DEFAULT_SORT, "dir": "desc", "page": 1, "per": DEFAULT_PER}
        pairs += [(name, str(values[name])) for name in defaults if values[name] != defaults[name]]
        return pairs

    def url(self, path: str, **changes: Any) -> str:
        query = urlencode(self.params(**changes))
        return f"{path}?{query}" if query else path


def is_field(name: str) -> bool:
    """Whether ``name`` may be used in a filter or sort."""
    if name in TOP_FIELDS or name == "data":
        return True
    return name.startswith("data.") and bool(_DATA_KEY.match(name[5:])) and not name.endswith(" ")


def parse_view(args: Mapping[str, Any] | Iterable[tuple[str, str]], columns: Iterable[Column] = (),
               known_statuses: Iterable[str] = ()) -> QueueView:
    """Parse the page's query string (a MultiDict or ``(name, value)`` pairs) into a :class:`QueueView`.

    ``columns`` (from :func:`infer_columns`) tell which keys hold dates and
    which hold text (searched by ``q``); ``known_statuses`` are the ones known
    to exist (``q`` matches them by name). Raises :class:`QueueFilterError`
    with a message meant for the user.
    """
    pairs = _pairs(args)
    columns = list(columns)
    kinds = {c.field: c.kind for c in columns}
    multi: dict[str, list[str]] = {name: [] for name in PARAMETERS}
    for name, value in pairs:
        if name not in multi:
            raise QueueFilterError(f"unknown parameter {name!r} (allowed: {', '.join(PARAMETERS)})")
        if len(value) > MAX_VALUE_CHARS:
            raise QueueFilterError(f"the value of {name!r} is too long (at most {MAX_VALUE_CHARS} characters)")
        if "\x00" in value:
            raise QueueFilterError(f"the value of {name!r} contains a NUL character")
        multi[name].append(value)
    for name in SINGLE_PARAMETERS:
        if len(multi[name]) > 1:
            raise QueueFilterError(f"parameter {name!r} given {len(multi[name])} times; give it once")
    statuses = _statuses(multi["status"])
    conditions = _conditions(multi["f"], multi["op"], multi["v"])
    search = _one(multi, "q").strip()
    if len(search) > MAX_SEARCH_CHARS:
        raise QueueFilterError(f"the search text is too long (at most {MAX_SEARCH_CHARS} characters)")
    sort, descending = _sort(_one(multi, "sort") or DEFAULT_SORT, _one(multi, "dir") or "desc")
    per = _per(_one(multi, "per"))
    page = _page(_one(multi, "page"), per)
    query = build_query(statuses, conditions, kinds)
    branches = search_branches(search, columns, known_statuses)
    return QueueView(statuses, conditions, search, sort, descending, page, per, query, branches)


def _pairs(args: Mapping[str, Any] | Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    if hasattr(args, "items") and hasattr(args, "getlist"):
        return list(args.items(multi=True))  # type: ignore[call-arg]
    if isinstance(args, Mapping):
        pairs: list[tuple[str, str]] = []
        for name, value in args.items():
            pairs += [(name, v) for v in value] if isinstance(value, (list, tuple)) else [(name, value)]
        return pairs
    return list(args)


def _one(multi: dict[str, list[str]], name: str) -> str:
    return multi[name][0] if multi[name] else ""


def _statuses(values: list[str]) -> tuple[str, ...]:
    statuses = tuple(dict.fromkeys(v.strip() for v in values if v.strip()))
    if len(statuses) > MAX_STATUSES:
        raise QueueFilterError(f"too many statuses (at most {MAX_STATUSES})")
    for status in statuses:
        if len(status) > 64:
            raise QueueFilterError("a status is at most 64 characters long")
    return statuses


def _conditions(fields: list[str], ops: list[str], values: list[str]) -> tuple[Condition, ...]:
    if not len(fields) == len(ops) == len(values):
        raise QueueFilterError("each filter needs a field (f), an operator (op) and a value (v)")
    rows = [Condition(f.strip(), o.strip(), v) for f, o, v in zip(fields, ops, values, strict=True) if f.strip()]
    if len(rows) > MAX_FILTERS:
        raise QueueFilterError(f"too many filters (at most {MAX_FILTERS})")
    for row in rows:
        if not is_field(row.field):
            raise QueueFilterError(f"cannot filter on {row.field!r}: use status, createdAt, updatedAt, _id "
                                   "or data.<key> with a flat key of letters, digits, '_', '-' or spaces")
        if row.op not in OPERATORS:
            raise QueueFilterError(f"unknown operator {row.op!r} (allowed: {', '.join(OPERATORS)})")
    return tuple(rows)


def _sort(name: str, direction: str) -> tuple[str, bool]:
    if name in ("_id", "data") or not is_field(name):
        raise QueueFilterError(f"cannot sort by {name!r}: use status, createdAt, updatedAt or data.<key>")
    if direction not in ("asc", "desc"):
        raise QueueFilterError(f"dir must be 'asc' or 'desc', not {direction!r}")
    return name, direction == "desc"


def _per(value: str) -> int:
    if not value:
        return DEFAULT_PER
    if not value.isdigit() or int(value) not in PAGE_SIZES:
        raise QueueFilterError(f"per must be one of {', '.join(map(str, PAGE_SIZES))}")
    return int(value)


def _page(value: str, per: int) -> int:
    if not value:
        return 1
    if not value.isdigit() or int(value) < 1:
        raise QueueFilterError(f"page must be a whole number from 1, not {value!r}")
    page = int(value)
    if (page - 1) * per >= MAX_ROWS:
        raise QueueFilterError(f"pages stop at row {MAX_ROWS:,}: reverse the sort or add a filter "
                               "to reach the entries beyond it")
    return page


# -- building the MongoDB query ----------------------------------------------

def build_query(statuses: tuple[str, ...], conditions: Iterable[Condition], kinds: Mapping[str, str]) -> dict:
    """The MongoDB filter for ``statuses`` and filter rows: one operator dict per field."""
    query: dict[str, dict] = {}
    if statuses:
        query["status"] = {"$in": list(statuses)}
    for condition in conditions:
        operator, value = _operator(condition, kinds.get(condition.field, ""))
        ops = query.setdefault(condition.field, {})
        if operator == "$nin":
            ops.setdefault("$nin", []).extend(value)
        elif operator in ops:
            raise QueueFilterError(f"two '{condition.op}' filters on {condition.field}: keep one")
        else:
            ops[operator] = value
    return query


def _operator(condition: Condition, kind: str) -> tuple[str, Any]:
    name, op, text = condition.field, condition.op, condition.value
    if op == "contains":
        if name in DATE_FIELDS or name == "_id":
            raise QueueFilterError(f"'contains' does not apply to {name}; use a range")
        if not text:
            raise QueueFilterError(f"'contains' on {name} needs some text")
        return "$regex", contains_pattern(text)
    if op in RANGE_OPERATORS:
        return RANGE_OPERATORS[op], _range_value(name, text, kind)
    candidates = _equal_candidates(name, text, kind)
    return ("$in" if op == "eq" else "$nin"), candidates


def contains_pattern(text: str) -> str:
    """A case-insensitive regex matching ``text`` literally (inline flag: portable, and fast on nx-27017)."""
    return "(?i)" + re.escape(text)


def _equal_candidates(name: str, text: str, kind: str) -> list[Any]:
    """What a typed value may equal: the text itself, and the number/boolean/null/date it spells."""
    if name in DATE_FIELDS:
        return [parse_date(text, name)]
    if name == "_id":
        return [ObjectId(text)] if ObjectId.is_valid(text) else [text] + _as_number(text)
    candidates: list[Any] = [text]
    if name == "status":
        return candidates
    candidates += _as_number(text)
    if text in ("true", "false"):
        candidates.append(text == "true")
    if text == "null":
        candidates.append(None)
    if kind == "date":
        try:
            candidates.append(parse_date(text, name))
        except QueueFilterError:
            pass
    return candidates


def _as_number(text: str) -> list[Any]:
    """``[int]`` or ``[float]`` when ``text`` is a finite number BSON can hold, else ``[]``."""
    text = text.strip()
    if not _NUMBER.match(text):
        return []
    if re.fullmatch(r"[-+]?\d+", text):
        number = int(text)
        return [number] if _INT64[0] <= number <= _INT64[1] else []
    value = float(text)
    return [value] if math.isfinite(value) else []


def _range_value(name: str, text: str, kind: str) -> Any:
    if name in ("status", "_id"):
        raise QueueFilterError(f"ranges do not apply to {name}; use '=' or 'contains'")
    if name in DATE_FIELDS:
        return parse_date(text, name)
    number = _as_number(text)
    if number:
        return number[0]
    if kind == "date":
        return parse_date(text, name)
    if kind == "string" and text:
        return text  # text compares as text (ISO dates kept as strings sort correctly too)
    raise QueueFilterError(f"a range on {name} needs a number or an ISO date like 2026-01-31 "
                           f"or 2026-01-31T12:00:00Z, not {text!r}")


def parse_date(text: str, name: str = "date") -> datetime:
    """An ISO-8601 date or datetime (naive means UTC), truncated to milliseconds as BSON stores it."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise QueueFilterError(f"{name} needs an ISO date like 2026-01-31 or 2026-01-31T12:00:00Z, "
                               f"not {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    moment = moment.astimezone(timezone.utc)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def search_branches(text: str, columns: Iterable[Column], statuses: Iterable[str] = ()) -> tuple[dict, ...]:
    """One query per text column (plus the statuses whose name contains ``text``, and an id): any may match.

    Statuses are matched here by name so their branch is an indexed ``$in``
    rather than one more regex scan.
    """
    if not text:
        return ()
    pattern = {"$regex": contains_pattern(text)}
    named = sorted(s for s in set(statuses) if text.lower() in s.lower())
    branches: list[dict] = [{"status": {"$in": named}}] if named else []
    fields = [c.field for c in columns if c.kind == "string" and c.usable]
    branches += [{name: dict(pattern)} for name in fields[:MAX_SEARCH_FIELDS]]
    if ObjectId.is_valid(text):
        branches.append({"_id": ObjectId(text)})
    return tuple(branches)


# -- columns -------------------------------------------------------------------

def kind_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, datetime):
        return "date"
    if isinstance(value, ObjectId):
        return "id"
    if isinstance(value, (dict, list)):
        return "object"
    return "mixed"


def infer_columns(entries: Iterable[Mapping[str, Any]], limit: int = MAX_COLUMNS) -> tuple[list[Column], int]:
    """Columns for a sample of entries: flat ``data`` keys by how often they occur, at most ``limit``.

    Returns the columns and how many further keys were left out. A column's
    kind is the one most of its non-null values have ("mixed" when no kind
    has three quarters of them).
    """
    kinds: dict[str, Counter] = {}
    seen: Counter = Counter()
    for entry in entries:
        data = entry.get("data")
        items = data.items() if isinstance(data, dict) else [(None, data)]
        for key, value in items:
            name = "data" if key is None else f"data.{key}"
            seen[name] += 1
            kinds.setdefault(name, Counter())[kind_of(value)] += 1
    names = sorted(seen, key=lambda n: (-seen[n], n))
    columns = [Column(name, _dominant(kinds[name]), seen[name]) for name in names[:limit]]
    return columns, max(0, len(names) - limit)


def _dominant(counter: Counter) -> str:
    counter = Counter({k: n for k, n in counter.items() if k != "null"})
    if not counter:
        return "null"
    kind, n = counter.most_common(1)[0]
    return kind if n * 4 >= sum(counter.values()) * 3 else "mixed"
