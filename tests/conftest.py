"""Shared fixtures: a store on mongomock or the embedded server, a run service, a site made by `sooner init`, a clock."""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

import pytest

from sooner.clock import SYSTEM_CLOCK, Clock, FakeClock
from sooner.config import Settings, load_settings
from sooner.runs.listeners import ListenerRegistry
from sooner.runs.service import RunService
from sooner.site import init_site
from sooner.store import Store, open_store

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = Path(__file__).resolve().parent / "scripts"


@pytest.fixture
def short_tmp():
    """A short temp folder: unix socket paths are limited to ~107 bytes, and pytest's tmp_path can be longer
    (under pytest-xdist it has a per-worker part too)."""
    path = Path(tempfile.mkdtemp(prefix="sk-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def released_together(count: int, work: Callable[[int], object], timeout: float = 60.0) -> list:
    """Call ``work(i)`` for i in range(count), each on its own thread, all released at once by a barrier.

    Their answers, in order; fails the test with the errors any of them raised.
    """
    barrier = threading.Barrier(count)
    answers: list = [None] * count
    errors: list[BaseException] = []

    def call(index: int) -> None:
        try:
            barrier.wait(timeout)
            answers[index] = work(index)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
    threads = [threading.Thread(target=call, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    assert not errors, errors
    return answers


def wait_for(condition: Callable[[], object], timeout: float = 15.0, interval: float = 0.02, message: str = "") -> object:
    """Poll ``condition`` until it returns something truthy or the deadline passes (then fail)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message or condition}")
        time.sleep(interval)


def processes_of(run_id: str) -> dict[int, float]:
    """{pid: create time} of every live process whose environment says it belongs to this run."""
    import psutil

    found = {}
    for process in psutil.process_iter():
        try:
            if process.status() != psutil.STATUS_ZOMBIE and process.environ().get("SOONER_RUN_ID") == run_id:
                found[process.pid] = process.create_time()
        except psutil.Error:
            continue
    return found


# A script that leaves its group three ways: `setsid`, a double fork (orphaned into another
# session), and a plain grandchild; then it says so and waits silently.
ESCAPING = """#!/bin/sh
setsid sleep 600 &
sh -c 'sleep 600 & wait' &
( setsid sh -c 'sleep 600; true' & )
echo started
wait
"""


def require_chromium() -> None:
    """Headless Chromium must start: a failure under CI (it installs Debian's chromium), a skip elsewhere."""
    from sooner.webapp.testing import chromium_problem

    problem = chromium_problem()
    if problem:
        if os.environ.get("CI"):
            pytest.fail(f"browser tests need headless Chromium: {problem}")
        pytest.skip(f"browser tests need headless Chromium: {problem}")


def alive(pid: int, created: float) -> bool:
    """The very process (pid + create time) still runs; a zombie or a recycled pid does not count."""
    import psutil

    try:
        process = psutil.Process(pid)
        return abs(process.create_time() - created) < 0.01 and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class CountingStop(threading.Event):
    """A stop event that records each wait and is set after ``limit`` of them."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit, self.waits = limit, []

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(timeout)
        if len(self.waits) >= self.limit:
            self.set()
        return self.is_set()


class LongWaits(threading.Event):
    """A worker's wake-up event that tells (``long_wait``) when its loop has started a wait of over 30 s."""

    def __init__(self) -> None:
        super().__init__()
        self.long_wait = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        if timeout is not None and timeout > 30:
            self.long_wait.set()
        return super().wait(timeout)


@pytest.fixture
def fake_clock() -> FakeClock:
    """One clock for a whole scenario: give it to the store, the run service, the scheduler and the worker."""
    return FakeClock(datetime(2026, 1, 5, 12, 0, tzinfo=timezone.utc))


_counter = itertools.count()


@pytest.fixture
def make_mock_store() -> Callable[..., Store]:
    """A factory of fresh in-memory stores (mongomock): ``make_mock_store(clock=fake_clock)``."""

    def make(clock: Clock = SYSTEM_CLOCK) -> Store:
        store = Store(f"mongomock://test-{os.getpid()}-{next(_counter)}", "sooner", clock=clock)
        store.ensure_indexes()
        return store
    return make


@pytest.fixture
def mock_store(make_mock_store) -> Store:
    """A fresh in-memory store (mongomock) on the system clock: fast, single process, not thread-safe."""
    return make_mock_store()


@pytest.fixture
def clocked_store(make_mock_store, fake_clock: FakeClock) -> Store:
    """A fresh in-memory store whose clock is the test's ``fake_clock``: what it records defaults to that time."""
    return make_mock_store(clock=fake_clock)


@pytest.fixture
def make_service() -> Callable[..., RunService]:
    """``make_service(store, chain_depth_limit=3, …)``: a RunService on the store's clock with these settings.

    ``clock=`` and ``listeners=`` pass through to RunService; other keywords are Settings fields.
    """

    def make(store: Store, *, clock: Clock | None = None, listeners: ListenerRegistry | None = None,
             **settings: object) -> RunService:
        return RunService(store, Settings(**settings), clock or store.clock, listeners=listeners)  # type: ignore[arg-type]
    return make


@pytest.fixture
def service(clocked_store: Store, make_service) -> RunService:
    """The run service of ``clocked_store``, on the test's ``fake_clock``."""
    return make_service(clocked_store)


@pytest.fixture(scope="session")
def embedded_site(tmp_path_factory) -> Path:
    """One site per test session whose embedded nx-27017 server tests share (fresh database per test)."""
    site = tmp_path_factory.mktemp("embedded") / "site"
    settings = init_site(site)
    yield site
    from sooner.store.embedded import EmbeddedServer

    EmbeddedServer(settings.state_dir).stop()


@pytest.fixture
def embedded_store(embedded_site: Path) -> Store:
    """A store on the real embedded server (PyMongo over the wire), with its own database."""
    settings = load_settings(embedded_site / "config.json", environ={},
                             overrides={"database": f"t{uuid.uuid4().hex[:12]}"})
    store = open_store(settings)
    yield store
    store.client.drop_database(settings.database)
    store.close()


@pytest.fixture
def real_store() -> Store:
    """A store on the real MongoDB named by SOONER_TEST_MONGO_URL, with its own database."""
    url = os.environ["SOONER_TEST_MONGO_URL"]
    name = f"t{uuid.uuid4().hex[:12]}"
    store = Store(url, name)
    store.ensure_indexes()
    yield store
    store.client.drop_database(name)
    store.close()


STORE_KINDS = ["mock", "embedded"] + (["real"] if os.environ.get("SOONER_TEST_MONGO_URL") else [])


@pytest.fixture(params=STORE_KINDS)
def any_store(request) -> Store:
    """The same test on mongomock, on the embedded server, and on a real MongoDB when SOONER_TEST_MONGO_URL is set."""
    return request.getfixturevalue(f"{request.param}_store")


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A fresh site made by `sooner init` (own embedded database, stopped afterwards)."""
    path = tmp_path / "site"
    settings = init_site(path)
    yield path
    from sooner.store.embedded import EmbeddedServer

    EmbeddedServer(settings.state_dir).stop()


def run_sooner(*args: str, cwd: Path | None = None, env: dict | None = None, input: str | None = None,
               timeout: float = 60) -> subprocess.CompletedProcess:
    """Run the real `sooner` CLI in a subprocess (python -m sooner)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "sooner", *args], cwd=cwd, env=full_env, input=input,
                          capture_output=True, text=True, timeout=timeout)


def git(*args: str, cwd: Path, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the real git CLI."""
    full_env = {**os.environ, "GIT_AUTHOR_NAME": "Tester", "GIT_AUTHOR_EMAIL": "tester@example.com",
                "GIT_COMMITTER_NAME": "Tester", "GIT_COMMITTER_EMAIL": "tester@example.com", **(env or {})}
    result = subprocess.run(["git", *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture
def clone(site: Path, tmp_path: Path) -> Path:
    """A working clone of the site's scripts.git on branch main."""
    path = tmp_path / "clone"
    git("clone", "-q", str(site / "scripts.git"), str(path), cwd=tmp_path)
    git("checkout", "-q", "-B", "main", cwd=path)
    return path


@pytest.fixture
def fast_passwords(monkeypatch) -> None:
    """Hash passwords with argon2's cheapest settings: the production cost is for real passwords."""
    from argon2 import PasswordHasher

    monkeypatch.setattr("sooner.store.users._passwords", PasswordHasher(time_cost=1, memory_cost=64, parallelism=1))


@pytest.fixture
def mock_web_app(mock_store: Store, fast_passwords):
    """``(app, socketio, settings)``: the web app on ``mock_store`` (no live hub thread), with users
    ``admin`` (password ``admin-password``, an admin) and ``viewer`` (``viewer-password``)."""
    from sooner.webapp import create_app

    settings = load_settings(None, environ={}, overrides={"secret_key": "k" * 40, "mongo_url": mock_store.url})
    app, socketio = create_app(settings, mock_store, live=False)
    app.config["TESTING"] = True
    mock_store.users.add("admin", "admin-password", admin=True)
    mock_store.users.add("viewer", "viewer-password")
    return app, socketio, settings


@contextlib.contextmanager
def served(app) -> Iterator[str]:
    """``app`` behind a real HTTP server (werkzeug, threads) in this process; yields its base URL."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="test-http", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join()


def csrf_of(page_text: str) -> str:
    """The CSRF token a Sooner page carries in its <meta name="csrf-token">."""
    import re

    return re.search(r'name="csrf-token" content="([^"]+)"', page_text).group(1)


def signed_in(app, name: str, password: str, landing: str = "/"):
    """A Flask test client signed in through the real login form; ``client.csrf`` is ready for POSTs."""
    client = app.test_client()
    page = client.get("/login")
    response = client.post("/login", data={"username": name, "password": password, "csrf_token": csrf_of(page.text)})
    assert response.status_code == 302, response.text
    client.csrf = csrf_of(client.get(landing).text)
    return client


@pytest.fixture
def start_worker(tmp_path: Path):
    """Start registered workers whose run_forever loops run on threads; every one is stopped at teardown.

    ``start_worker(store, settings, name, capacity, **options)`` returns the Worker; with
    ``start=False`` it is only registered (the test drives ``run_once``/``heartbeat`` itself).
    """
    from sooner.worker.loop import Worker

    started: list[tuple[threading.Event, threading.Thread]] = []

    def start(store: Store, settings: Settings, name: str = "w1", capacity: int = 2, *, start: bool = True,
              **options) -> Worker:
        options.setdefault("cache", tmp_path / f"cache-{name}")
        worker = Worker(store, settings, name, capacity, **options)
        worker.register()
        if not start:
            return worker
        stop = threading.Event()
        thread = threading.Thread(target=worker.run_forever, args=(stop,), daemon=True)
        thread.start()
        started.append((stop, thread))
        return worker

    yield start
    for stop, _ in started:
        stop.set()
    for _, thread in started:
        thread.join(20)
