"""The gunicorn application the web processes run: what loading the app imports."""

from __future__ import annotations

import subprocess
import sys

LOAD_IN_A_FRESH_PROCESS = """
import sys
from sooner.gunicorn_app import Gunicorn
Gunicorn(lambda: __import__("sooner.webapp"), {}).load()
import engineio.client
hidden = [name for name in ("requests", "websocket", "aiohttp") if name in sys.modules]
assert not hidden, hidden
assert engineio.client.requests is None  # engineio's client does without it
import requests  # and afterwards it imports as usual (apprise needs it to send a notification)
print("loaded", requests.__name__)
"""


def test_loading_the_app_leaves_out_the_libraries_only_socketio_clients_use():
    done = subprocess.run([sys.executable, "-c", LOAD_IN_A_FRESH_PROCESS], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "loaded requests"
