#!/usr/bin/env python3
"""Second half of a chain: runs on "extract-done" and summarises the file it names."""
import csv
import sys

from sooner import api

data = api.data() or {}
path = data.get("path")
if not path:
    print("no input: this job runs when extract.sh emits extract-done", file=sys.stderr)
    sys.exit(2)
with open(path, newline="") as handle:
    rows = list(csv.DictReader(handle))
visits = [int(row["visits"]) for row in rows]
print(f"{len(rows)} days, {sum(visits)} visits, best day {max(visits)}")
