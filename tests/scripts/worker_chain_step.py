#!/usr/bin/env python3
"""Job script for worker tests: prints its data; a.py emits a-done, b.py emits b-done, c.py ends the chain."""

import json
import os

from sooner import api

data = api.data() or {}
print(f"{api.job()} got {json.dumps(data, sort_keys=True)}")
event = {"a.py": "a-done", "b.py": "b-done", "c.py": None}.get(os.path.basename(api.job() or ""))
if event:
    result = api.emit(event, {"path": data.get("path", []) + [api.job()]})
    print(f"emitted {event}: {result}")
