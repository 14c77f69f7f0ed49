"""The versioned REST API ``/api/v1`` (flask-smorest; OpenAPI 3.1 at ``/api/v1/openapi.json``).

Modules: :mod:`.common` (blueprint, spec generator, errors, scope checks, cursors),
:mod:`.schemas` (marshmallow schemas: the document is made from them), :mod:`.jobs`,
:mod:`.runs`, :mod:`.others` (events, workers, deploys), :mod:`.samples` (monitoring charts), :mod:`.queues` (queue entries), :mod:`.hooks`
(webhooks and their delivery logs), :mod:`.waiting` (why a run waits), :mod:`.usage` (a job's usage
counters) and :mod:`.docs` (the reference page
``/api/v1/docs``). Authentication is the app's (:mod:`sooner.webapp.auth`): a bearer token, or the
signed-in session with its CSRF token. The older ``/api`` (:mod:`sooner.webapp.api`) stays as it is.
"""

from __future__ import annotations

from flask import Flask

from sooner.webapp.v1 import docs, jobs, others, runs, usage, waiting  # noqa: F401  (their routes join the blueprint)
from sooner.webapp.v1 import hooks, queues  # noqa: F401  (their routes join the blueprint)
from sooner.webapp.v1 import notifications  # noqa: F401  (its route joins the blueprint)
from sooner.webapp.v1 import poison  # noqa: F401  (its routes join the blueprint)
from sooner.webapp.v1 import samples  # noqa: F401  (its routes join the blueprint)
from sooner.webapp.v1.common import blp, make_api


def register(app: Flask) -> None:
    api = make_api(app)
    api.register_blueprint(blp)
    app.extensions["sooner_v1_api"] = api
    app.register_blueprint(docs.bp)
