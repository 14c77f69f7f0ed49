#!/usr/bin/env python3
"""Puts work into the "pages" queue: one entry per URL to check.

Data (optional): {"urls": ["https://example.com", ...]}. Browse the queue in
the web UI (Queues → pages) or with `sooner queue list pages`.
"""
from sooner import api

urls = (api.data() or {}).get("urls") or [f"https://example.com/page/{n}" for n in range(1, 21)]
queue = api.queue("pages")
for n, url in enumerate(urls, 1):
    queue.put({"url": url, "attempts": 0})
    api.progress(n, len(urls))
print(f"queued {len(urls)} pages")
api.emit("pages-queued", {"count": len(urls)})
