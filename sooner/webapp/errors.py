"""Error responses: a JSON body for the API and scripts, a page for browsers."""

from __future__ import annotations

from flask import Flask, render_template
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException

from sooner.errors import JobNotFound, RunNotFound, SoonerError, StoreError
from sooner.webapp.context import json_error, wants_json


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
        return error_response(404, str(exc))

    @app.errorhandler(StoreError)
    def store_error(exc: StoreError) -> ResponseReturnValue:
        return error_response(503, str(exc))

    @app.errorhandler(SoonerError)
    def sooner_error(exc: SoonerError) -> ResponseReturnValue:
        return error_response(400, str(exc))
