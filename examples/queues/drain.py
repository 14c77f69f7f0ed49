#!/usr/bin/env python3
"""Works through the "pending" entries of the "pages" queue.

Each entry is claimed atomically (pending → working), so several runs of this
job on several workers never process the same page twice. Hook it to
`pages-queued` (sooner init --examples does) to run after feed.py.
"""
import hashlib
import time

from sooner import api

queue = api.queue("pages")
total = len(queue.find(status="pending"))
done = 0
while (entry := queue.claim("pending", "working")) is not None:
    url = entry["data"]["url"]
    digest = hashlib.sha256(url.encode()).hexdigest()[:12]  # stand-in for real work
    time.sleep(0.05)
    queue.update(entry["_id"], status="done", data={**entry["data"], "digest": digest,
                                                      "attempts": entry["data"].get("attempts", 0) + 1})
    done += 1
    print(f"{url} -> {digest}")
    api.progress(done, max(total, done))
print(f"processed {done} pages")
