"""`sooner.api` for job scripts: the stderr fallback outside a socket, and queues from a run."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

from conftest import wait_for
from sooner.config import Settings
from sooner.model import FINISHED, ManualTrigger
from sooner.runs.service import RunService
from sooner.worker.loop import Worker
from sooner.worker.protocol import Call, parse_stderr_line
from sooner.worker.testing import deploy_files

PY = f"#!{sys.executable}\n"


def test_without_a_socket_calls_fall_back_to_stderr_lines_sooner_can_parse(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOONER_")}
    code = ("from sooner import api\n"
            "api.progress(1, 2)\napi.progress(50)\napi.emit('done', {'rows': [1, 2], 'ok': True, 'none': None})\n"
            "try:\n    api.progress(-1)\nexcept ValueError as exc:\n    print('refused:', exc)\n"
            "print(api.data(), api.run_id())\n")
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, result.stderr
    calls = [parse_stderr_line(line) for line in result.stderr.splitlines()]
    assert calls == [Call("progress", {"current": 1, "max": 2}), Call("progress", {"current": 50, "max": None}),
                     Call("emit", {"event": "done", "data": {"rows": [1, 2], "ok": True, "none": None}})]
    assert result.stdout == "refused: progress: current must be a finite non-negative number, got -1\nNone None\n"


def test_a_run_uses_a_queue_through_sooner_api(embedded_store, tmp_path):
    store = embedded_store
    deploy_files(store, {"feed.py": PY + "from sooner import api\nq = api.queue('pages')\n"
                                         "for n in range(3):\n    q.put({'n': n})\n"
                                         "print(q.claim('pending', 'working')['data'])\n"})
    settings = Settings(mongo_url=store.url, database=store.database_name, heartbeat_s=0.2, lease_s=2.0,
                        output_flush_ms=50)
    worker = Worker(store, settings, "q", 1, cache=tmp_path / "cache")
    worker.register()
    stop = threading.Event()
    thread = threading.Thread(target=worker.run_forever, args=(stop,), daemon=True)
    thread.start()
    try:
        run_id = RunService(store, settings).queue("feed.py", ManualTrigger()).id
        run = wait_for(lambda: (r := store.runs.get(run_id)).status in FINISHED and r, 20)
    finally:
        stop.set()
        thread.join(20)
    assert run.status == "succeeded", store.output.text(run_id)
    assert "{'n': 0}" in store.output.text(run_id)
    assert store.queues("pages").counts() == {"pending": 2, "working": 1}
