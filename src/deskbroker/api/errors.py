"""Renders every error as application/problem+json with a message a person understands."""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from deskbroker.api import deps
from deskbroker.errors import DeskbrokerError
from deskbroker.services.database_health import (
    DATABASE_BUSY,
    DATABASE_DOWN,
    OUTAGE_TYPES,
    database_outage,
)

log = logging.getLogger("deskbroker.api")
PROBLEM = "application/problem+json"


_LONG_WORD = re.compile(r"\S{81,}")
_PYDANTIC_PREFIX = re.compile(r"^(Value error|Assertion failed), ")
_NOT_AN_OBJECT = {"model_attributes_type", "model_type", "dict_type"}
PARSE_FAILED = "There was an error parsing the body"


def readable(text: str) -> str:
    """Shorten any echoed input (a 3000-character id, say) so the sentence stays short."""
    return _LONG_WORD.sub(lambda m: m.group(0)[:40] + "…", text)


def problem(status: int, title: str, detail: str, **extra: Any) -> JSONResponse:
    body = {
        "type": "about:blank",
        "title": title,
        "status": status,
        "detail": readable(detail),
        **extra,
    }
    return JSONResponse(body, status_code=status, media_type=PROBLEM)


def _outage_answer(request: Request, words: str, exc: Exception) -> JSONResponse:
    # The driver's message only: the database library's own text carries the statement's
    # parameters.
    reason = getattr(exc, "orig", None) or type(exc).__name__
    log.warning("database unavailable on %s %s: %s", request.method, request.url.path, reason)
    ctx = deps.context_if_any(request)
    wait = ctx.settings.db_retry_after_s if ctx is not None else 5
    # No database error text: it may name hosts, users and statements.
    response = problem(503, "Database unavailable", words.format(wait=wait))
    response.headers["Retry-After"] = str(wait)
    return response


def _describe(error: dict[str, Any]) -> str:
    raw_loc = tuple(error.get("loc", ()))
    loc = [str(p) for p in raw_loc if p not in ("body", "query", "path", "header")]
    where = ".".join(loc)
    kind = error.get("type", "")
    if kind == "json_invalid":
        return "the request body is not valid JSON"
    if raw_loc == ("body",) and kind == "missing":
        return "the request needs a body: a JSON object"
    if raw_loc == ("body",) and kind in _NOT_AN_OBJECT:
        return "the request body must be a JSON object"
    if kind == "extra_forbidden":
        return f"unknown field {where!r}"
    if kind == "missing":
        return f"{where} is required"
    message = _PYDANTIC_PREFIX.sub("", str(error.get("msg", "is invalid")))
    return readable(f"{where}: {message}" if where else message)


def install(app: FastAPI) -> None:
    """Attach the handlers that turn every failure into a problem document."""

    @app.exception_handler(DeskbrokerError)
    async def _domain(request: Request, exc: DeskbrokerError) -> JSONResponse:
        response = problem(exc.status, exc.title, exc.detail, **exc.extra)
        if exc.status == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
        if "retry_after" in exc.extra:
            response.headers["Retry-After"] = str(int(exc.extra["retry_after"]))
        return response

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        details = [_describe(e) for e in errors[:10]]
        return problem(
            422,
            "Invalid input",
            "; ".join(details) or "the request is invalid",
            errors=[
                {"field": ".".join(str(p) for p in e.get("loc", ())), "message": d}
                for e, d in zip(errors[:10], details, strict=False)
            ],
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        titles = {
            400: "Bad request",
            401: "Not authenticated",
            404: "Not found",
            405: "Method not allowed",
            413: "Payload too large",
        }
        detail = str(exc.detail)
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"there is no {request.url.path} here"
        elif exc.status_code == 405:
            detail = f"{request.url.path} does not answer {request.method}"
        elif detail == PARSE_FAILED:
            detail = (
                "the request body could not be read as JSON: it is not UTF-8, nests too "
                "deeply, or holds a number too large to parse"
            )
        response = problem(exc.status_code, titles.get(exc.status_code, "Error"), detail)
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    async def _database(request: Request, exc: Exception) -> JSONResponse:
        words = database_outage(exc)
        if words is None:
            return await _unexpected(request, exc)
        return _outage_answer(request, words, exc)

    # What the handler is registered for; ``database_outage`` decides on each (another
    # database error, an integrity error say, is a bug and stays a 500).
    for kind in OUTAGE_TYPES:
        app.add_exception_handler(kind, _database)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        words = database_outage(exc)
        if words is not None:
            return _outage_answer(request, words, exc)
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return problem(500, "Internal error", "the broker hit an unexpected error; it is logged")


__all__ = [
    "DATABASE_BUSY",
    "DATABASE_DOWN",
    "PARSE_FAILED",
    "PROBLEM",
    "database_outage",
    "install",
    "problem",
    "readable",
]
