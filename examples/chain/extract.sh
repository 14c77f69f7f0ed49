#!/usr/bin/env bash
# First half of a chain: produces a file and emits "extract-done" with its path.
# report.py is hooked to that event (sooner init --examples sets the hook).
set -euo pipefail
out=$(mktemp /tmp/sooner-extract.XXXXXX.csv)
echo "day,visits" > "$out"
for day in 1 2 3 4 5 6 7; do
  echo "2026-11-0$day,$((RANDOM % 1000))" >> "$out"
  echo ">>> sooner.progress($day, 7)" >&2
done
echo "wrote $out"
echo ">>> sooner.emit(\"extract-done\", {\"path\": \"$out\"})" >&2
