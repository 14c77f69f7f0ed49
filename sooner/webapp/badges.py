"""Status badges: ``GET /badge/<job>.svg`` shows passing / failing / running / never run and the last run's time.

A job's badge is public only when its ``public_badge`` setting is on
(``sooner job set NAME --public-badge yes``); otherwise anonymous requests get
404, the same answer as for a job that does not exist, and signed-in users see
it. Every text in the SVG is escaped (job names may hold ``<``, ``&`` or quotes).
"""

from __future__ import annotations

from datetime import datetime, timezone
from xml.sax.saxutils import escape, quoteattr

from flask import Blueprint, Response
from flask.typing import ResponseReturnValue

from sooner.model.badge import BadgeState, badge_state
from sooner.model.run import Run
from sooner.webapp.context import current_user, json_error, web_store

bp = Blueprint("badges", __name__)

CHAR_PX = 6.6  # Verdana 11px, about
MAX_NAME_CHARS = 60


@bp.get("/badge/<path:name>")
def badge(name: str) -> ResponseReturnValue:
    """The SVG badge of job ``name`` (the path ends in ``.svg``)."""
    if not name.endswith(".svg"):
        return json_error(404, "badges are /badge/<job>.svg")
    job = web_store().jobs.find(name.removesuffix(".svg"))
    if job is None or job.deleted or not (job.public_badge or current_user() is not None):
        return json_error(404, f"no badge for {name.removesuffix('.svg')[:MAX_NAME_CHARS]!r}")
    last = web_store().runs.last_per_job([job.name]).get(job.name)
    state = badge_state(last)
    response = Response(render_badge(job.name, state, _last_time(last)), mimetype="image/svg+xml")
    response.headers["Cache-Control"] = f"{'public' if job.public_badge else 'private'}, max-age=30"
    return response


def _last_time(run: Run | None) -> datetime | None:
    if run is None:
        return None
    return run.finished_at or run.started_at or run.queued_at


def render_badge(job: str, state: BadgeState, when: datetime | None) -> str:
    """A two-part flat badge: the job's name on grey, the state (and when) in the state's colour."""
    label = job if len(job) <= MAX_NAME_CHARS else job[:MAX_NAME_CHARS - 1] + "…"
    message = state.value
    if when is not None:
        moment = when if when.tzinfo else when.replace(tzinfo=timezone.utc)
        message += f" · {moment.astimezone(timezone.utc):%Y-%m-%d %H:%M} UTC"
    left, right = int(len(label) * CHAR_PX) + 12, int(len(message) * CHAR_PX) + 12
    width = left + right
    title = f"{label}: {message}"
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="20" role="img" '
        f'aria-label={quoteattr(title)}>'
        f"<title>{escape(title)}</title>"
        f'<rect width="{left}" height="20" fill="#555"/>'
        f'<rect x="{left}" width="{right}" height="20" fill="{state.colour}"/>'
        f'<g fill="#fff" font-family="Verdana,DejaVu Sans,sans-serif" font-size="11">'
        f'<text x="6" y="14">{escape(label)}</text>'
        f'<text x="{left + 6}" y="14" data-state={quoteattr(state.name.lower())}>{escape(message)}</text>'
        f"</g></svg>"
    )
