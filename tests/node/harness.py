"""The npm ``socket.io-client`` under Node and a served site, for tests of the live protocol (tests/test_live_*.py).

``install(folder)`` runs ``npm ci`` from this folder's package.json and
package-lock.json into ``folder`` (a temporary copy, so the checkout stays
clean), offline from npm's cache when it can; ``node_client(tmp_path_factory)``
does it once per test session. ``readme_example()`` is the JavaScript example
of README.md's "Live protocol" section, verbatim, so the documentation cannot
drift from what works. ``NodeScript`` runs a script there with its output in
files that tests wait on. ``live_site(root)`` is a site made by `sooner init`
with `sooner web` and `sooner worker -n w1` running as real processes and
tests/scripts/live_lines.sh pushed with real git.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

HERE = Path(__file__).resolve().parent
README = HERE.parent.parent / "README.md"
LOCK_FILES = ("package.json", "package-lock.json")


def node_problem() -> str | None:
    """Why the Node tests cannot run here, or None."""
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install nodejs npm)"
    return None


_installed: dict[str, Path] = {}


def node_client(tmp_path_factory: Any) -> Path:
    """A folder with the npm socket.io-client installed, once per test session; skips (fails on CI) without Node."""
    import pytest

    problem = node_problem()
    if problem:
        if os.environ.get("CI"):
            pytest.fail(f"live protocol tests need Node: {problem}")
        pytest.skip(f"live protocol tests need Node: {problem}")
    key = str(tmp_path_factory.getbasetemp())
    if key not in _installed:
        _installed[key] = install(tmp_path_factory.mktemp("node"))
    return _installed[key]


def install(folder: Path) -> Path:
    """``npm ci`` of tests/node's lock file into ``folder``; returns ``folder`` (it holds node_modules)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in LOCK_FILES:
        shutil.copy2(HERE / name, folder / name)
    quiet = ["--no-audit", "--no-fund", "--loglevel=error"]
    offline = subprocess.run(["npm", "ci", "--offline", *quiet], cwd=folder, capture_output=True, text=True,
                             timeout=300)
    if offline.returncode != 0:
        online = subprocess.run(["npm", "ci", *quiet], cwd=folder, capture_output=True, text=True, timeout=600)
        if online.returncode != 0:
            raise AssertionError(f"npm ci failed in {folder}:\n{offline.stderr}\n{online.stderr}")
    return folder


def readme_example() -> str:
    """The ```js block of README.md's "Live protocol" section."""
    section = README.read_text().split("#### Live protocol", 1)[1].split("\n### ", 1)[0]
    found = re.search(r"```js\n(.*?)```", section, re.S)
    if found is None:
        raise AssertionError("README.md's Live protocol section has no ```js example")
    return found.group(1)


class NodeScript:
    """``node <script> args…`` in the installed folder, stdout and stderr in files."""

    def __init__(self, folder: Path, name: str, source: str, args: list[str], env: dict[str, str]) -> None:
        self.path = folder / name
        self.path.write_text(source)
        self.out_path, self.err_path = self.path.with_suffix(".out"), self.path.with_suffix(".err")
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.process = subprocess.Popen(["node", str(self.path), *args], cwd=folder, stdout=out, stderr=err,
                                            env={**os.environ, **env})

    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def json_lines(self) -> list[dict]:
        """stderr's lines that are JSON objects (what instrumented scripts print)."""
        return [json.loads(line) for line in self.stderr().splitlines() if line.startswith("{")]

    def wait(self, timeout: float = 60.0) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"node {self.path.name} did not end within {timeout}s:\n"
                                 f"stdout:\n{self.stdout()}\nstderr:\n{self.stderr()}") from None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


# -- a served site -------------------------------------------------------------------------------------

PASSWORD = "live-protocol-password"


@contextmanager
def live_site(root: Path) -> Iterator[SimpleNamespace]:
    """`sooner web` and `sooner worker -n w1` on a fresh site under ``root``, live_lines.sh pushed with git.

    Users ``admin`` and ``viewer`` (password :data:`PASSWORD`); ``admin`` is an admin API token.
    """
    from conftest import SCRIPTS, git, wait_for
    from sooner.site import init_site
    from sooner.store import open_store
    from sooner.store.embedded import EmbeddedServer
    from sooner.webapp.testing import Process, WebServer

    settings = init_site(root / "site")
    config = root / "site" / "config.json"
    store = open_store(settings)
    web = worker = None
    try:
        store.users.add("admin", PASSWORD, admin=True)
        store.users.add("viewer", PASSWORD)
        web = WebServer(config, root / "web.log").wait_ready()
        worker = Process(["worker", "-n", "w1"], config, root / "worker.log")
        clone = root / "clone"
        git("clone", "-q", str(settings.repo_path), str(clone), cwd=root)
        git("checkout", "-q", "-B", "main", cwd=clone)
        shutil.copy2(SCRIPTS / "live_lines.sh", clone / "live_lines.sh")
        git("add", ".", cwd=clone)
        git("commit", "-qm", "Add live_lines.sh", cwd=clone)
        git("push", "-q", "origin", "main", cwd=clone)
        wait_for(lambda: store.jobs.get("live_lines.sh"), timeout=30, message="the pushed job")
        wait_for(lambda: store.workers.get("w1"), timeout=30, message="worker w1 to register")
        admin, _ = store.tokens.create("admin", "tests")
        yield SimpleNamespace(base=web.base_url, store=store, root=root, admin=admin, web=web, worker=worker,
                              settings=settings)
    finally:
        if worker is not None:
            worker.stop(hurry=True)
        if web is not None:
            web.stop()
        store.close()
        EmbeddedServer(settings.state_dir).stop()


def api(base: str, path: str, token: str, body: object = None) -> dict:
    """A REST API call with a bearer token (POST when there is a body); the JSON answer."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method="POST" if data is not None else "GET",
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def start_run(site: SimpleNamespace, data: dict) -> str:
    """Start live_lines.sh through the REST API with ``data``; the run's id."""
    return api(site.base, "/api/jobs/live_lines.sh/runs", site.admin, {"data": data})["run"]["id"]


def follow_readme(folder: Path, site: SimpleNamespace, run_id: str, token: str, extra: str = "") -> NodeScript:
    """The README's example following ``run_id`` with ``token``; ``extra`` JavaScript runs after it."""
    return NodeScript(folder, f"follow-{run_id}.js", readme_example() + extra, [run_id],
                      {"SOONER_URL": site.base, "SOONER_TOKEN": token})
