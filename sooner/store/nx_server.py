"""Entry point of the embedded database process: nx-27017 with one correction.

nx-27017 0.8.1 (neosqlite 1.17) stores a datetime given to ``$set`` on an
existing document as a *string* when it takes its SQL fast path (sqlite3's
default datetime adapter), while inserts and its Python update path keep
BSON dates. Sooner sets timestamps with ``$set`` all the time, so the server
is started through this module, which sends updates carrying datetimes down
the Python path. Measured and covered by tests/test_store_dates.py; drop this
when the upstream fast path handles dates.
"""

from __future__ import annotations

import datetime
from typing import Any


def _has_datetime(value: Any) -> bool:
    if isinstance(value, datetime.datetime):
        return True
    if isinstance(value, dict):
        return any(_has_datetime(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_has_datetime(v) for v in value)
    return False


def patch_date_updates() -> None:
    """Route updates that carry datetimes to neosqlite's Python update path."""
    from neosqlite.collection.query_helper._sql_updates import SqlUpdatesMixin

    original = SqlUpdatesMixin._can_use_sql_updates
    if getattr(original, "_sooner_patched", False):
        return

    def can_use_sql_updates(self: Any, update_spec: dict, doc_id: int, original_doc: Any = None) -> bool:
        if _has_datetime(update_spec):
            return False
        return original(self, update_spec, doc_id, original_doc)

    can_use_sql_updates._sooner_patched = True  # type: ignore[attr-defined]
    SqlUpdatesMixin._can_use_sql_updates = can_use_sql_updates  # type: ignore[method-assign]


def main() -> None:
    import logging

    patch_date_updates()
    # nx-27017 logs every ping at INFO into <site>/.sooner/db.log; keep the log
    # to what someone would want to read (warnings and errors).
    logging.getLogger("nx_27017").setLevel(logging.WARNING)
    from nx_27017.nx_27017 import main as nx_main

    nx_main()


if __name__ == "__main__":
    main()
