"""Serves the portal, the console, the API docs page and their scripts and styles, all
from the installed package (``deskbroker.web``): no page loads anything from another host.

The pages are static; their scripts call the REST API with the user's bearer token, so
the console passes the very permission checks the API makes (one permission model), and
no cookie carries authority (nothing to forge across sites: no CSRF). The content
security policy allows scripts, styles, fonts and images from this origin only, and no
inline script or style element.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from fastapi import APIRouter
from fastapi.responses import RedirectResponse, Response

from deskbroker.errors import NotFound

PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "font-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'none'"
)
# Our own files change with each release: the browser asks again (a 304 would need
# validators; the files are small and local).
CACHE = "no-cache"
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
PAGES = {"/portal/": "portal.html", "/console/": "console.html", "/api/v1/docs": "docs.html"}
MISSING_VENDOR = (
    "the portal's browser assets are not installed: run `make portal-assets` (npm ci in "
    "web/portal, copied into deskbroker/web/static/vendor)"
)


def _type(name: str) -> str:
    return TYPES.get(name[name.rfind(".") :], "application/octet-stream")


@cache
def _file(folder: str, name: str) -> bytes | None:
    """A file of the package's web folder, read once; ``None`` if there is none."""
    if not name or "/" in name or "\\" in name or name.startswith("."):
        return None
    node = resources.files("deskbroker.web").joinpath(folder).joinpath(name)
    return node.read_bytes() if node.is_file() else None


def _answer(body: bytes, name: str) -> Response:
    return Response(
        body,
        media_type=_type(name),
        headers={"Content-Security-Policy": PAGE_POLICY, "Cache-Control": CACHE},
    )


def router() -> APIRouter:
    """The page and asset routes (none of them in the OpenAPI document)."""
    r = APIRouter(include_in_schema=False)

    def page(name: str) -> Response:
        body = _file("pages", name)
        if body is None:  # pragma: no cover - the pages ship with the package
            raise NotFound(f"page {name} is missing from the installed package")
        return _answer(body, name)

    for path, name in PAGES.items():
        r.add_api_route(path, lambda name=name: page(name), methods=["GET"])
    for bare in ("/portal", "/console"):
        r.add_api_route(
            bare, lambda bare=bare: RedirectResponse(bare + "/", status_code=308), methods=["GET"]
        )

    @r.get("/static/{name}")
    def static(name: str) -> Response:
        body = _file("static", name)
        if body is None:
            raise NotFound(f"no file {name} here")
        return _answer(body, name)

    @r.get("/static/vendor/{name}")
    def vendor(name: str) -> Response:
        body = _file("static/vendor", name)
        if body is None:
            raise NotFound(f"no file {name} here; {MISSING_VENDOR}")
        return _answer(body, name)

    return r
