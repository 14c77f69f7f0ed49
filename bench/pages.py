"""Server time of every web page on realistic data (embedded database), against a data-free page.

    python bench/pages.py

Seeds 500 jobs, 10,000 runs, a running run with 5,000 output chunks, 300 events, 100
deploys and 20 workers into a fresh site's embedded database, then times each page
through the Flask test client (best and median of 7) and prints it with its ratio to
the baseline: the login page, which touches no data. Target: every page under 200 ms.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from sooner.site import init_site  # noqa: E402
from sooner.store import open_store  # noqa: E402
from sooner.store.embedded import EmbeddedServer  # noqa: E402
from sooner.webapp.testing import seed_realistic_data  # noqa: E402
from test_web_realistic import page_urls, signed_in_client  # noqa: E402

REPEATS = 7


class _Patch:
    """The bit of pytest's monkeypatch that signed_in_client uses."""

    def setattr(self, target: str, value: object) -> None:
        module, name = target.rsplit(".", 1)
        setattr(__import__(module, fromlist=[name]), name, value)


def timed(client, url: str, headers: dict) -> list[float]:
    times = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        response = client.get(url, headers=headers)
        times.append(time.perf_counter() - started)
        assert response.status_code == 200, (url, response.status_code)
    return times


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        settings = init_site(Path(tmp) / "site")
        store = open_store(settings)
        try:
            started = time.perf_counter()
            ids = seed_realistic_data(store)
            print(f"seeded in {time.perf_counter() - started:.1f}s")
            client = signed_in_client(store, _Patch())
            token, _ = store.tokens.create("admin")
            anonymous = client.application.test_client()  # signed out: /login renders a form, no data
            baseline = statistics.median(timed(anonymous, "/login", {}))
            print(f"{'page':45} {'best ms':>8} {'median ms':>10} {'x login':>8}")
            print(f"{'/login (baseline, no data)':45} {'':>8} {baseline * 1000:10.1f} {1.0:8.1f}")
            for url in page_urls(ids):
                headers = {"Authorization": f"Bearer {token}"} if url.startswith("/api/") else {}
                times = timed(client, url, headers)
                median = statistics.median(times)
                print(f"{url[:45]:45} {min(times) * 1000:8.1f} {median * 1000:10.1f} {median / baseline:8.1f}")
        finally:
            store.close()
            EmbeddedServer(settings.state_dir).stop()


if __name__ == "__main__":
    main()
