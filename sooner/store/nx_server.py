"""Entry point of the embedded database process: nx-27017 with one correction and a data-directory lock.

The process takes an exclusive ``flock`` on ``<data-dir>/.lock`` before it
opens any database file and holds it for its whole life (the kernel drops it
when the process dies, even by ``kill -9``). A second server on the same data
directory exits with :data:`EXIT_DATA_DIR_IN_USE` and one line on stderr
naming the holder. The holder writes its record into the lock file (pid,
port, start time, the ``--instance`` token it was given), so a client whose
``db.json`` is lost or corrupt can still find and verify it
(:mod:`sooner.store.embedded`).

nx-27017 0.8.1 (neosqlite 1.17) stores a datetime given to ``$set`` on an
existing document as a *string* when it takes its SQL fast path (sqlite3's
default datetime adapter), while inserts and its Python update path keep
BSON dates. Sooner sets timestamps with ``$set`` all the time, so the server
is started through this module, which sends updates carrying datetimes down
the Python path. Measured and covered by tests/test_store_dates.py; drop this
when the upstream fast path handles dates.
"""

from __future__ import annotations

import argparse
import datetime
import fcntl
import json
import os
import sys
from typing import Any

# Defined beside the clients: this module runs as __main__, so if the client
# module imported it, it would be imported twice in the server (runpy warns).
from sooner.store.embedded import EXIT_DATA_DIR_IN_USE, LOCK_NAME


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


def hold_data_dir(data_dir: str, record: dict[str, Any]) -> int:
    """Lock ``data_dir`` for this process's life and write ``record`` into the lock file; returns the fd.

    Exits with :data:`EXIT_DATA_DIR_IN_USE` when another process holds it.
    """
    os.makedirs(data_dir, exist_ok=True)
    path = os.path.join(data_dir, LOCK_NAME)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)  # not inheritable: only this process holds it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder_pid(fd)
        print(f"sooner.store.nx_server: error: {data_dir} is in use by the embedded database with pid {holder} "
              f"(lock {path}); not starting a second server on it", file=sys.stderr)
        sys.exit(EXIT_DATA_DIR_IN_USE)
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(record).encode(), 0)
    os.fsync(fd)
    return fd


def _holder_pid(fd: int) -> str:
    try:
        pid = json.loads(os.pread(fd, 4096, 0) or b"null").get("pid")
        return str(pid) if isinstance(pid, int) else "unknown"
    except (OSError, ValueError, AttributeError):
        return "unknown"


def own_record(data_dir: str, port: int, instance: str) -> dict[str, Any]:
    """What the lock file says about this process (the same fields as ``db.json``)."""
    import psutil

    me = psutil.Process()
    return {"pid": me.pid, "port": port, "create_time": me.create_time(), "boot_time": psutil.boot_time(),
            "instance": instance, "data_dir": data_dir}


def main() -> None:
    import logging

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--instance", required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--port", type=int, required=True)
    ours, rest = parser.parse_known_args()
    data_dir = os.path.abspath(ours.data_dir)
    lock = hold_data_dir(data_dir, own_record(data_dir, ours.port, ours.instance))
    # nx-27017 parses sys.argv itself and knows no --instance; the token only has
    # to be on this process's command line, where clients verify it.
    sys.argv = [sys.argv[0], *rest, "--data-dir", data_dir, "--port", str(ours.port)]
    patch_date_updates()
    # nx-27017 logs every ping at INFO into <site>/.sooner/db.log; keep the log
    # to what someone would want to read (warnings and errors).
    logging.getLogger("nx_27017").setLevel(logging.WARNING)
    from nx_27017.nx_27017 import main as nx_main

    try:
        nx_main()
    finally:
        os.close(lock)


if __name__ == "__main__":
    main()
