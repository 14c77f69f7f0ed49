"""Helpers for end-to-end tests and benchmarks: real server and worker processes, headless Chromium.

Nothing here is used by Sooner itself. Chromium is the Debian package at
``/usr/bin/chromium``, driven by Playwright; no browser is ever downloaded.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bson import ObjectId

from sooner.clock import utcnow
from sooner.model import JOB_DEFAULTS, RunStatus
from sooner.store import schema

if TYPE_CHECKING:
    from sooner.store import Store

CHROMIUM = os.environ.get("SOONER_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def chromium_problem() -> str | None:
    """Why headless Chromium cannot run here, or None."""
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} is missing (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright Python package is missing (pip install playwright; no browser download needed)"
    return None


def launch_chromium(playwright: Any) -> Any:
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


class Process:
    """A ``python -m sooner …`` child process with its output in a log file."""

    def __init__(self, args: list[str], config: Path, log: Path, env: dict[str, str] | None = None) -> None:
        self.log_path = log
        self._log = open(log, "wb")
        full_env = {**os.environ, "SOONER_CONFIG": str(config), "PYTHONUNBUFFERED": "1", **(env or {})}
        self.process = subprocess.Popen([sys.executable, "-m", "sooner", *args], env=full_env,
                                        stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    def alive(self) -> bool:
        return self.process.poll() is None

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 15.0, hurry: bool = False) -> None:
        """SIGTERM, then SIGKILL after ``timeout``. ``hurry`` sends a second SIGTERM, which makes a
        worker cancel its running scripts at once instead of letting them finish."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                if hurry:
                    try:
                        self.process.wait(0.5)
                    except subprocess.TimeoutExpired:
                        self.process.send_signal(signal.SIGTERM)
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()


class WebServer(Process):
    """``python -m sooner web`` on a free port; ``start()`` returns once it answers."""

    def __init__(self, config: Path, log: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        super().__init__(["web", "--host", "127.0.0.1", "--port", str(self.port)], config, log)

    def wait_ready(self, timeout: float = 30.0) -> WebServer:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"sooner web exited ({self.process.returncode}):\n{self.output()}")
            try:
                with urllib.request.urlopen(self.base_url + "/login", timeout=2) as response:
                    if response.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"sooner web did not answer within {timeout}s:\n{self.output()}")


def sign_in(page: Any, base_url: str, user: str, password: str) -> None:
    page.goto(base_url + "/login")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_url(base_url + "/")


# -- realistic data for page tests and the page benchmark ----------------------------------------
STATUSES = [RunStatus.SUCCEEDED.value] * 8 + [RunStatus.FAILED.value, RunStatus.CANCELLED.value]


def seed_realistic_data(store: Store) -> dict:
    """500 jobs, 10,000 runs, a running run with 5,000 output chunks, 300 events, 100 deploys, 20 workers.

    Documents go in as stored (``store.import_documents``), in bulk: far faster than the run service, and
    the history is finished already, so no listener has anything to do.
    """
    rng = random.Random(5)
    now = utcnow()
    jobs = [{"_id": f"team{i % 25}/job{i:03d}.sh", **JOB_DEFAULTS, "hooks": [f"evt{i % 7}"], "deleted": False,
             "enabled": i % 3 != 0, "schedule": ("*/5 * * * *", "0 3 * * *", "30 2 * * 1-5", None)[i % 4],
             "timezone": ("UTC", "Europe/Berlin", "America/New_York")[i % 3], "commit": "c" * 40, "blob": "b" * 40,
             "created_at": now, "updated_at": now, "new": i % 50 == 0} for i in range(500)]
    store.import_documents(schema.JOBS, jobs)
    runs = []
    for k in range(10_000):
        queued = now - timedelta(seconds=(10_000 - k) * 30)
        runs.append({"_id": str(ObjectId.from_datetime(queued))[:8] + f"{k:016x}",
                     "job": jobs[rng.randrange(500)]["_id"], "status": rng.choice(STATUSES),
                     "trigger": {"type": "cron", "scheduled_for": None},
                     "data": None, "commit": "c" * 40, "target": None, "worker": f"w{k % 20}", "progress": None,
                     "attempt": 1, "queued_at": queued, "started_at": queued,
                     "finished_at": queued + timedelta(seconds=5),
                     "duration_s": 5.0 + rng.random(), "exit_code": 0})
    running = runs[-1]
    running.update(status=RunStatus.RUNNING.value, finished_at=None, duration_s=None,
                   progress={"current": 3, "max": 10})
    store.import_documents(schema.RUNS, runs)
    store.output.append(running["_id"], [(seq, "stdout" if seq % 5 else "stderr", f"line {seq} " + "x" * 60 + "\n",
                                          None) for seq in range(5000)])
    store.import_documents(schema.EVENTS, [
        {"_id": str(ObjectId()), "name": f"evt{i % 7}", "data": {"i": i, "rows": list(range(5))},
         "source": {"type": "run", "run": runs[i]["_id"], "job": runs[i]["job"]}, "depth": 0,
         "t": now - timedelta(seconds=i), "runs": [runs[-i - 2]["_id"]], "note": None} for i in range(300)])
    store.import_documents(schema.DEPLOYS, [
        {"commit": f"{i:040x}", "tree": "t", "branch": "main", "author": "Dev <d@x>", "message": f"change {i}",
         "created": [jobs[i]["_id"]], "updated": [], "removed": [], "restored": [], "time": now - timedelta(hours=i)}
        for i in range(100)])
    for w in range(20):
        store.workers.register(f"w{w}", instance=str(w), host="host", pid=w, capacity=4, tags=[], version="0.1.0",
                               stale_after_s=30, now=now - timedelta(seconds=w * 10))
    return {"job": jobs[1]["_id"], "run": running["_id"]}
