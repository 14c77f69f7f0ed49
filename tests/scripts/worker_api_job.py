#!/usr/bin/env python3
"""Job script for worker tests: uses sooner.api over the socket (progress with a changing max, data, emit)."""

import json
import os
import sys

from sooner import api

data = api.data() or {}
print(f"run {api.run_id()} job {api.job()} data {json.dumps(data, sort_keys=True)}")
print(f"argv1 is the socket: {sys.argv[1] == os.environ['SOONER_SOCKET']}")
api.progress(1, 10)
api.progress(5, 20)
if data.get("emit"):
    result = api.emit(data["emit"], {"from": api.job(), "n": data.get("n", 0) + 1})
    print(f"emitted {data['emit']}: {len(result['runs'])} run(s)")
print('>>> sooner.emit("api-job:stderr", {"via": "stderr"})', file=sys.stderr)
