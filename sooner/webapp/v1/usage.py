"""``/api/v1/jobs/{name}/usage``: how a job's runs were started (usage counters, issue #11)."""

from __future__ import annotations

from typing import Any

from flask.typing import ResponseReturnValue

from sooner.store.reads import JobUsage
from sooner.webapp.context import web_store
from sooner.webapp.formatting import iso
from sooner.webapp.v1 import schemas as s
from sooner.webapp.v1.common import blp


def usage_body(job: str, usage: JobUsage, since: Any = None) -> dict[str, Any]:
    """Counts by trigger type, by API token (with its name while it exists) and by hook, most used first."""
    def most_first(counts: dict) -> list:
        return sorted(counts.items(), key=lambda item: (-item[1], item[0] is None, str(item[0])))
    return {"job": job, "since": iso(since) or None, "total": usage.total,
            "triggers": dict(most_first(usage.triggers)),
            "tokens": [{"token": token, "name": usage.token_names.get(token) if token else None, "runs": n}
                       for token, n in most_first(usage.tokens)],
            "hooks": [{"hook": hook, "runs": n} for hook, n in most_first(usage.hooks)]}


@blp.route("/jobs/<path:name>/usage")
@blp.arguments(s.UsageQuery, location="query")
@blp.response(200, s.JobUsageSchema)
def job_usage(query: dict[str, Any], name: str) -> ResponseReturnValue:
    """Runs of the job by trigger type, API token and webhook hook (``since``: created from then on)."""
    store = web_store()
    job = store.jobs.get(name)
    return usage_body(job.name, store.reads.job_usage(job.name, since=query.get("since")), query.get("since"))
