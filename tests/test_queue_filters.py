"""sooner.store.queue_filters: the Queues page's query string becomes a whitelisted MongoDB query.

User text only ever becomes a value; fields and operators come from fixed
lists, and anything else is refused with a message meant for the user.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone

import pytest
from bson import ObjectId
from werkzeug.datastructures import MultiDict

from sooner.store.queue_filters import (MAX_ROWS, Column, QueueFilterError, QueueView, contains_pattern, infer_columns,
                                        is_field, parse_date, parse_view)

COLUMNS = [Column("data.url", "string", 10), Column("data.size", "number", 10), Column("data.seen", "date", 10),
           Column("data.meta", "object", 3)]


def view(*pairs: tuple[str, str], columns=COLUMNS) -> QueueView:
    return parse_view(MultiDict(list(pairs)), columns)


def refused(*pairs: tuple[str, str]) -> str:
    with pytest.raises(QueueFilterError) as caught:
        view(*pairs)
    return str(caught.value)


def keys_of(value):
    """Every key in a query, however deep."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from keys_of(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from keys_of(item)


# -- the defaults and the simple cases ------------------------------------------------

def test_no_parameters_mean_newest_first_first_page_everything():
    parsed = view()
    assert parsed.query == {} and parsed.search_branches == ()
    assert parsed.sort_spec == ("createdAt", -1)
    assert (parsed.page, parsed.per, parsed.skip) == (1, 50, 0)
    assert not parsed.filtered


def test_statuses_become_one_in_condition():
    assert view(("status", "pending"), ("status", "failed"), ("status", "pending")).query == {
        "status": {"$in": ["pending", "failed"]}}


def test_equality_matches_the_text_and_the_number_or_literal_it_spells():
    assert view(("f", "data.size"), ("op", "eq"), ("v", "42")).query == {"data.size": {"$in": ["42", 42]}}
    assert view(("f", "data.url"), ("op", "eq"), ("v", "true")).query == {"data.url": {"$in": ["true", True]}}
    assert view(("f", "data.url"), ("op", "eq"), ("v", "null")).query == {"data.url": {"$in": ["null", None]}}
    assert view(("f", "data.size"), ("op", "eq"), ("v", "1.5")).query == {"data.size": {"$in": ["1.5", 1.5]}}


def test_not_equal_filters_combine_into_one_nin():
    parsed = view(("f", "status"), ("op", "ne"), ("v", "done"), ("f", "status"), ("op", "ne"), ("v", "failed"))
    assert parsed.query == {"status": {"$nin": ["done", "failed"]}}


def test_range_on_a_number_column_and_both_ends_on_one_field():
    parsed = view(("f", "data.size"), ("op", "gte"), ("v", "10"), ("f", "data.size"), ("op", "lt"), ("v", "2e3"))
    assert parsed.query == {"data.size": {"$gte": 10, "$lt": 2000.0}}


def test_range_on_dates_accepts_iso_dates_and_means_utc():
    parsed = view(("f", "createdAt"), ("op", "gt"), ("v", "2026-01-31"),
                  ("f", "updatedAt"), ("op", "lte"), ("v", "2026-02-01T12:30:00.123456+02:00"))
    assert parsed.query == {"createdAt": {"$gt": datetime(2026, 1, 31, tzinfo=timezone.utc)},
                            "updatedAt": {"$lte": datetime(2026, 2, 1, 10, 30, 0, 123000, tzinfo=timezone.utc)}}
    assert view(("f", "data.seen"), ("op", "gte"), ("v", "2026-03-01")).query == {
        "data.seen": {"$gte": datetime(2026, 3, 1, tzinfo=timezone.utc)}}


def test_range_on_a_text_column_compares_text():
    assert view(("f", "data.url"), ("op", "gte"), ("v", "m")).query == {"data.url": {"$gte": "m"}}


def test_contains_is_a_case_insensitive_escaped_regex_string():
    parsed = view(("f", "data.url"), ("op", "contains"), ("v", "a.b*(c)|"))
    pattern = parsed.query["data.url"]["$regex"]
    assert isinstance(pattern, str) and set(parsed.query["data.url"]) == {"$regex"}
    assert re.search(pattern, "xxA.B*(C)|yy") and not re.search(pattern, "aXb")


def test_search_is_one_branch_per_text_column_plus_the_statuses_it_names():
    parsed = parse_view(MultiDict([("q", "Ing")]), COLUMNS, ["pending", "done", "failing"])
    assert parsed.search_branches == ({"status": {"$in": ["failing", "pending"]}},
                                      {"data.url": {"$regex": contains_pattern("Ing")}})
    assert parsed.query == {}
    assert view(("q", "zzz")).search_branches == ({"data.url": {"$regex": contains_pattern("zzz")}},)


def test_search_for_an_object_id_also_looks_up_the_id():
    oid = ObjectId()
    assert {"_id": oid} in view(("q", str(oid))).search_branches


def test_sort_page_and_page_size():
    parsed = view(("sort", "data.size"), ("dir", "asc"), ("page", "3"), ("per", "20"))
    assert parsed.sort_spec == ("data.size", 1)
    assert (parsed.page, parsed.per, parsed.skip) == (3, 20, 40)


def test_params_round_trip_into_the_same_view():
    pairs = [("status", "pending"), ("f", "data.url"), ("op", "contains"), ("v", "x y&z"), ("q", "hello"),
             ("sort", "data.size"), ("dir", "asc"), ("page", "2"), ("per", "100")]
    parsed = view(*pairs)
    assert parsed.params() == pairs
    assert view(*parsed.params(page=5)).page == 5
    assert parsed.url("/queues/a", status=[], conditions=[], q="", page=1) == "/queues/a?sort=data.size&dir=asc&per=100"


def test_columns_come_from_flat_data_keys_most_frequent_first():
    entries = [{"data": {"url": "u", "size": 1, "meta": {"a": 1}}}, {"data": {"url": "v", "size": 2.5}},
               {"data": {"url": 3}}, {"data": "just text"}, {"data": {"when": datetime.now(timezone.utc)}}]
    columns, hidden = infer_columns(entries, limit=4)
    assert [(c.field, c.kind, c.seen) for c in columns] == [
        ("data.url", "mixed", 3), ("data.size", "number", 2), ("data", "string", 1), ("data.meta", "object", 1)]
    assert hidden == 1
    assert not next(c for c in columns if c.field == "data.meta").usable


# -- hostile and malformed input ------------------------------------------------------------

@pytest.mark.parametrize("name", ["$where", "data.$ne", "data.a.b", "data.", "__proto__", "data.x'y", "data.a[0]",
                                  "data.$gt", "status.$ne", "data.key\"", "constructor", "data. x"])
def test_fields_outside_the_whitelist_are_refused(name):
    assert not is_field(name)
    assert "cannot filter on" in refused(("f", name), ("op", "eq"), ("v", "1"))


@pytest.mark.parametrize("op", ["$gt", "where", "regex", "$regex", "in", "EQ", ""])
def test_operators_outside_the_whitelist_are_refused(op):
    assert "unknown operator" in refused(("f", "data.url"), ("op", op), ("v", "1"))


@pytest.mark.parametrize("value", ['{"$gt": ""}', '{"$where": "sleep(1000)"}', "$where", "$ne", "[1, 2]",
                                   '{"$regex": ".*"}', "__proto__"])
def test_operator_looking_values_stay_literal_text(value):
    parsed = view(("f", "data.url"), ("op", "eq"), ("v", value), ("f", "data.size"), ("op", "contains"),
                  ("v", value), ("q", value))
    assert parsed.query["data.url"] == {"$in": [value]}
    assert re.search(parsed.query["data.size"]["$regex"], "x" + value + "x")
    keys = [k for k in keys_of(parsed.query) if k.startswith("$")]
    assert set(keys) <= {"$in", "$regex"}
    for branch in parsed.search_branches:
        (name, condition), = branch.items()
        assert is_field(name) and set(condition) == {"$regex"}


def test_a_data_key_that_looks_like_a_prototype_is_just_a_key():
    assert view(("f", "data.__proto__"), ("op", "eq"), ("v", "x")).query == {"data.__proto__": {"$in": ["x"]}}


def test_unknown_parameters_are_refused_with_the_allowed_list():
    message = refused(("where", "1"))
    assert "unknown parameter 'where'" in message and "status" in message


def test_a_single_parameter_given_twice_is_refused():
    assert "given 2 times" in refused(("sort", "status"), ("sort", "createdAt"))


def test_incomplete_filter_rows_are_refused():
    assert "needs a field" in refused(("f", "data.url"), ("op", "eq"))


def test_blank_filter_rows_from_the_form_are_ignored():
    assert view(("f", ""), ("op", "eq"), ("v", "")).query == {}


@pytest.mark.parametrize("value", ["abc", "1e999", "nan", "inf", "2026-13-40", "", "0x10"])
def test_ranges_need_a_number_or_a_date(value):
    message = refused(("f", "data.size"), ("op", "gt"), ("v", value))
    assert "needs a number or an ISO date" in message


@pytest.mark.parametrize("value", ["yesterday", "2026-02-30", "1/2/2026", "", "9999999999"])
def test_bad_dates_are_refused_clearly(value):
    assert "ISO date" in refused(("f", "createdAt"), ("op", "gt"), ("v", value))


def test_huge_integers_stay_text_instead_of_overflowing_bson():
    huge = "9" * 30
    assert view(("f", "data.size"), ("op", "eq"), ("v", huge)).query == {"data.size": {"$in": [huge]}}


def test_very_long_values_and_nul_characters_are_refused():
    assert "too long" in refused(("f", "data.url"), ("op", "eq"), ("v", "x" * 201))
    assert "too long" in refused(("q", "y" * 5000))
    assert "NUL" in refused(("q", "a\x00b"))


def test_too_many_filters_and_statuses_are_refused():
    many = [pair for n in range(11) for pair in (("f", "data.url"), ("op", "ne"), ("v", str(n)))]
    assert "too many filters" in refused(*many)
    assert "too many statuses" in refused(*[("status", f"s{n}") for n in range(21)])


def test_conflicting_filters_on_one_field_are_refused():
    assert "two 'eq' filters" in refused(("f", "data.url"), ("op", "eq"), ("v", "a"),
                                         ("f", "data.url"), ("op", "eq"), ("v", "b"))


@pytest.mark.parametrize("pairs, words", [
    ((("sort", "$natural"),), "cannot sort by"), ((("sort", "_id"),), "cannot sort by"),
    ((("dir", "up"),), "dir must be"), ((("page", "0"),), "page must be"), ((("page", "-1"),), "page must be"),
    ((("page", "x"),), "page must be"), ((("per", "1000"),), "per must be"), ((("per", "7"),), "per must be"),
])
def test_bad_sort_and_paging_are_refused(pairs, words):
    assert words in refused(*pairs)


def test_pages_stop_at_the_row_cap():
    assert view(("page", str(MAX_ROWS // 50))).page == MAX_ROWS // 50
    assert "reverse the sort" in refused(("page", str(MAX_ROWS // 50 + 1)))


def test_contains_and_ranges_only_where_they_make_sense():
    assert "does not apply" in refused(("f", "createdAt"), ("op", "contains"), ("v", "2026"))
    assert "ranges do not apply" in refused(("f", "status"), ("op", "gt"), ("v", "a"))
    assert "needs some text" in refused(("f", "data.url"), ("op", "contains"), ("v", ""))


def test_parse_date_truncates_to_milliseconds():
    assert parse_date("2026-01-02T03:04:05.678999Z") == datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=timezone.utc)
