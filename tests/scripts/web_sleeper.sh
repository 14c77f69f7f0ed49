#!/usr/bin/env bash
# tests/test_browser.py: runs until cancelled.
echo "started"
while true; do sleep 0.2; done
