#!/usr/bin/env bash
# tests/test_live_*.py: SOONER_DATA {"lines": N} numbered lines (default 40), each followed by progress i/N
# on stderr, {"pause": S} seconds apart (default none). With {"gate": "<path>", "at": K} it stops after
# line K until that file exists, so a test can act mid-run (freeze the database) without timing assumptions.
total=$(printf '%s' "$SOONER_DATA" | sed -n 's/.*"lines": *\([0-9]*\).*/\1/p')
total=${total:-40}
gate=$(printf '%s' "$SOONER_DATA" | sed -n 's/.*"gate": *"\([^"]*\)".*/\1/p')
at=$(printf '%s' "$SOONER_DATA" | sed -n 's/.*"at": *\([0-9]*\).*/\1/p')
pause=$(printf '%s' "$SOONER_DATA" | sed -n 's/.*"pause": *\([0-9.]*\).*/\1/p')
for i in $(seq 1 "$total"); do
  echo "line $i of $total"
  echo ">>> sooner.progress($i, $total)" >&2
  if [ -n "$gate" ] && [ "$i" = "${at:-0}" ]; then
    while [ ! -e "$gate" ]; do sleep 0.02; done
  fi
  if [ -n "$pause" ]; then sleep "$pause"; fi
done
