"""Error responses: a JSON body for the API and scripts, a page for browsers."""

from __future__ import annotations

import re

from flask import Flask, make_response, render_template, url_for
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException

from sooner.errors import JobNotFound, RunNotFound, SoonerError, StoreError, StoreUnreachable
from sooner.webapp.context import json_error, wants_json

RETRY_AFTER_S = 5
# What the CLI adds to "no run/job …" for its own users; the web links to the list instead.
_CLI_HINT = re.compile(r" \(see `sooner [^`]*`\)$")


def error_response(status: int, message: str) -> ResponseReturnValue:
    if wants_json():
        return json_error(status, message)
    return render_template("error.html", status=status, message=message), status


def forbidden(message: str) -> ResponseReturnValue:
    return error_response(403, message)


def register(app: Flask) -> None:
    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> ResponseReturnValue:
        return error_response(exc.code or 500, exc.description or exc.name)

    @app.errorhandler(JobNotFound)
    @app.errorhandler(RunNotFound)
    def not_found(exc: SoonerError) -> ResponseReturnValue:
        message = _CLI_HINT.sub("", str(exc))
        if wants_json():
            return json_error(404, message)
        back = ((url_for("runs.index"), "All runs") if isinstance(exc, RunNotFound)
                else (url_for("jobs.index"), "All jobs"))
        return render_template("error.html", status=404, message=message, back=back), 404

    @app.errorhandler(StoreError)
    def store_error(exc: StoreError) -> ResponseReturnValue:
        if not isinstance(exc, StoreUnreachable):
            return error_response(503, str(exc))
        # An outage: runs go on (workers journal their output), so say so and come back by itself.
        message = (f"{exc}. Runs go on meanwhile: workers keep their output and store it once the "
                   f"database is back. This page tries again every {RETRY_AFTER_S} seconds.")
        if wants_json():
            response = json_error(503, str(exc))
        else:
            response = make_response(render_template("error.html", status=503, message=message,
                                                     retry_after=RETRY_AFTER_S), 503)
        response.headers["Retry-After"] = str(RETRY_AFTER_S)
        return response

    @app.errorhandler(SoonerError)
    def sooner_error(exc: SoonerError) -> ResponseReturnValue:
        return error_response(400, str(exc))
