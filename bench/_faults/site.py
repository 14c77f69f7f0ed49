"""A corrupt or stale ``.sooner/db.json``: commands go on, signal nothing unrelated, start no second server.

Real ``sooner jobs`` and ``sooner db stop`` processes in a real site whose
embedded server runs or not, with ``db.json`` made invalid JSON, a list, a
record with a bad pid, removed, a record naming a live ``sleep`` (with its
real start time and this site's data directory), and a record copied from
another site whose server runs (as ``cp -r`` of a site would leave).

Counted: the site's job missing from ``sooner jobs`` (lost: the command used
another database), two servers on the site's data directory (doubled), and a
command that exited non-zero or printed a traceback, or the ``sleep`` or the
other site's server signalled (crashes).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import psutil

from _faults.harness import Lab, Tally, clean_env, nx_servers_of
from _faults.outage import free_port
from sooner.config import load_settings
from sooner.site import init_site
from sooner.store import open_store
from sooner.store.embedded import EmbeddedServer
from sooner.worker.testing import deploy_files


def record_naming(site: Path, pid: int) -> str:
    """A db.json as complete as a real one (this data dir, the process's real start time) but naming ``pid``."""
    process = psutil.Process(pid)
    return json.dumps({"pid": pid, "port": free_port(), "create_time": process.create_time(),
                       "boot_time": psutil.boot_time(), "instance": "0" * 32,
                       "data_dir": os.path.realpath(site / ".sooner" / "db"), "started_at": process.create_time()})


def corrupt_db_json(lab: Lab, tally: Tally, index: int) -> None:
    """Each damaged db.json, with the site's server running and stopped; `sooner jobs` after each."""
    site, other = lab.tmp / "site", lab.tmp / "other"
    servers = {path: EmbeddedServer(init_site(path).state_dir) for path in (site, other)}
    for server in servers.values():
        lab.cleanups.append(server.stop)
    store = open_store(load_settings(site / "config.json", environ={}))
    try:
        deploy_files(store, {"kept.sh": "#!/bin/sh\n"})
    finally:
        store.close()
    servers[other].ensure_running(keep=True)
    other_pid = servers[other].status().pid
    sleeper = subprocess.Popen(["sleep", "600"])

    def stop_sleeper() -> None:
        sleeper.kill()
        sleeper.wait(10)
    lab.cleanups.append(stop_sleeper)
    other_record = (other / ".sooner" / "db.json").read_text()
    variants = [("invalid JSON", '{"pid": '), ("a JSON list", "[1, 2]"), ("a string pid", '{"pid": "x", "port": 1}'),
                ("removed", None), ("naming a live sleep", record_naming(site, sleeper.pid)),
                ("copied from another site", other_record)]
    env = clean_env(TMPDIR=str(lab.socket_dir))
    data_dir = site / ".sooner" / "db"
    for running in (True, False):
        for name, text in variants:
            what = f"db.json {name}, server {'running' if running else 'stopped'}"
            if running:
                servers[site].ensure_running(keep=True)
            else:
                servers[site].stop()
            path = site / ".sooner" / "db.json"
            if text is None:
                path.unlink(missing_ok=True)
            else:
                path.write_text(text)
            result = lab.sooner(["jobs"], env, cwd=site)
            _check(tally, what, "sooner jobs", result, sleeper, other_pid)
            tally.check("lost", "kept.sh" in result.stdout, f"{what}: `sooner jobs` does not list the site's job: "
                                                           f"{result.stdout.strip()[-200:]!r}")
            servers_now = nx_servers_of(data_dir)
            tally.add("doubled", len(servers_now) - 1, f"{what}: {len(servers_now)} servers on the data directory")
    stopped = lab.sooner(["db", "stop"], env, cwd=site)
    _check(tally, "at the end", "sooner db stop", stopped, sleeper, other_pid)
    tally.check("doubled", not nx_servers_of(data_dir), f"`sooner db stop` left {nx_servers_of(data_dir)} running")


def _check(tally: Tally, what: str, command: str, result: subprocess.CompletedProcess, sleeper: subprocess.Popen,
           other_pid: int | None) -> None:
    tally.check("crashes", result.returncode == 0 and "Traceback" not in result.stderr,
                f"{what}: `{command}` exited {result.returncode}: {result.stderr.strip()[-300:]}")
    tally.check("crashes", sleeper.poll() is None, f"{what}: `{command}` signalled the unrelated sleep")
    tally.check("crashes", other_pid is not None and psutil.pid_exists(other_pid)
                and psutil.Process(other_pid).status() != psutil.STATUS_ZOMBIE,
                f"{what}: `{command}` stopped the other site's server")
