#!/usr/bin/env python3
"""Job script for worker tests: write SOONER_DATA["mb"] megabytes of numbered lines to stdout, fast."""

import sys

from sooner import api

megabytes = (api.data() or {}).get("mb", 1)
out = sys.stdout.buffer
line = 0
written = 0
target = megabytes * 1024 * 1024
while written < target:
    block = b"".join(b"%09d " % (line + i) + b"x" * 1013 + b"\n" for i in range(64))
    out.write(block)
    written += len(block)
    line += 64
out.flush()
print(f"wrote {written} bytes", file=sys.stderr)
