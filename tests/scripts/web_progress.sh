#!/usr/bin/env bash
# tests/test_browser.py: 20 numbered lines with progress; after line 10 it waits
# until the file named by $SOONER_DATA (a JSON string) exists, so the test can
# reload the page mid-run without timing assumptions.
gate=$(printf '%s' "$SOONER_DATA" | tr -d '"')
for i in $(seq 1 20); do
  echo "line $i of 20"
  echo ">>> sooner.progress($i, 20)" >&2
  if [ "$i" = 10 ]; then
    echo "waiting at the gate" >&2
    while [ ! -e "$gate" ]; do sleep 0.05; done
  fi
done
echo -e "\033[32mdone\033[0m"
