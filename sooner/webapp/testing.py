"""Helpers for end-to-end tests and benchmarks: real server and worker processes, headless Chromium.

Nothing here is used by Sooner itself. Chromium is the Debian package at
``/usr/bin/chromium``, driven by Playwright; no browser is ever downloaded.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

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
