"""Renders every error as application/problem+json with a message a person understands."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from deskbroker.errors import DeskbrokerError

log = logging.getLogger("deskbroker.api")
PROBLEM = "application/problem+json"


def problem(status: int, title: str, detail: str, **extra: Any) -> JSONResponse:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    return JSONResponse(body, status_code=status, media_type=PROBLEM)


def _describe(error: dict[str, Any]) -> str:
    loc = [str(p) for p in error.get("loc", ()) if p not in ("body", "query", "path", "header")]
    where = ".".join(loc)
    kind = error.get("type", "")
    if kind == "extra_forbidden":
        return f"unknown field {where!r}"
    if kind == "missing":
        return f"{where} is required"
    if kind == "json_invalid":
        return "the request body is not valid JSON"
    message = str(error.get("msg", "is invalid"))
    return f"{where}: {message}" if where else message


def install(app: FastAPI) -> None:
    """Attach the handlers that turn every failure into a problem document."""

    @app.exception_handler(DeskbrokerError)
    async def _domain(request: Request, exc: DeskbrokerError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        response = problem(exc.status, exc.title, exc.detail, **exc.extra)
        if headers:
            response.headers.update(headers)
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
        titles = {404: "Not found", 405: "Method not allowed", 401: "Not authenticated"}
        detail = str(exc.detail)
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"there is no {request.url.path} here"
        response = problem(exc.status_code, titles.get(exc.status_code, "Error"), detail)
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return problem(500, "Internal error", "the broker hit an unexpected error; it is logged")
