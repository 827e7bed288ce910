"""Glance v2: image list with filters and paging, image get."""

from __future__ import annotations

import hashlib
from typing import Any
from urllib.parse import urlencode

from cloudsim.core import AuthContext, Service
from cloudsim.state import Image
from cloudsim.web import ApiError, Request, Response, iso, json_response, paginate, text_response

DEFAULT_LIMIT = 25


class Glance(Service):
    """The image service under /image."""

    name = "image"
    prefix = "/image"

    def register(self) -> None:
        """Add the Glance routes."""
        add = self.router.add
        add("GET", "", self.versions)
        add("GET", "/versions", self.versions)
        add("GET", "/v2/images", self.list_images)
        add("GET", "/v2/images/{image_id}", self.get_image)
        add("GET", "/v2/schemas/images", self.schema)
        add("GET", "/v2/schemas/image", self.schema)

    def is_public(self, req: Request) -> bool:
        """Version documents need no token."""
        return req.method == "GET" and req.path.rstrip("/") in ("/image", "/image/versions")

    def render_error(self, err: ApiError) -> Response:
        """Glance answers errors in plain text."""
        resp = text_response(err.status, f"{err.status} {err.message}\n\n{err.message}\n\n")
        resp.headers.update(err.headers)
        return resp

    def versions(self, req: Request) -> Response:
        """GET /image/: 300 with the v2 versions (Glance's discovery answer)."""
        base = self.core.base_url
        versions = [
            {
                "id": f"v2.{minor}",
                "status": "CURRENT" if minor == 16 else "SUPPORTED",
                "links": [{"rel": "self", "href": f"{base}/image/v2/"}],
            }
            for minor in range(16, -1, -1)
        ]
        return json_response(300, {"versions": versions})

    def schema(self, req: Request) -> Response:
        """A minimal image schema (clients that validate only need it to exist)."""
        return json_response(
            200, {"name": "image", "properties": {}, "additionalProperties": {"type": "string"}}
        )

    def _visible(self, req: Request) -> list[Image]:
        ctx: AuthContext = req.auth
        project_id = ctx.project.id if ctx.project else None
        return [
            i
            for i in self.state.images.values()
            if i.visibility in ("public", "community", "shared")
            or i.owner == project_id
            or ctx.is_admin
        ]

    def view(self, image: Image) -> dict[str, Any]:
        """An image as Glance v2 shows it."""
        digest = hashlib.md5(image.id.encode(), usedforsecurity=False).hexdigest()
        view: dict[str, Any] = {
            "id": image.id,
            "name": image.name,
            "status": image.status,
            "visibility": image.visibility,
            "protected": False,
            "os_hidden": False,
            "checksum": digest,
            "os_hash_algo": "sha512",
            "os_hash_value": hashlib.sha512(image.id.encode()).hexdigest(),
            "owner": image.owner or self.core.find_project("admin").id,
            "size": image.size,
            "virtual_size": image.size * 5,
            "min_disk": image.min_disk,
            "min_ram": image.min_ram,
            "container_format": image.container_format,
            "disk_format": image.disk_format,
            "created_at": iso(image.created),
            "updated_at": iso(image.created),
            "tags": list(image.tags),
            "self": f"/v2/images/{image.id}",
            "file": f"/v2/images/{image.id}/file",
            "schema": "/v2/schemas/image",
        }
        view.update(image.properties)
        return view

    def list_images(self, req: Request) -> Response:
        """GET /v2/images: newest first, 25 per page by default, ``next`` when full."""
        images = self._visible(req)
        fields = ("name", "status", "visibility", "owner", "disk_format", "container_format")
        for field in () if self.core.ignore_filters else fields:
            wanted = req.arg(field)
            if wanted:
                images = [i for i in images if getattr(i, field) == wanted]
        tag_filters = [] if self.core.ignore_filters else req.query.get("tag", [])
        if tag_filters:
            images = [i for i in images if all(t in i.tags for t in tag_filters)]
        sort_key = req.arg("sort_key") or "created_at"
        sort_dir = req.arg("sort_dir") or "desc"
        if sort_key not in ("created_at", "updated_at", "name", "size", "id") or sort_dir not in (
            "asc",
            "desc",
        ):
            raise ApiError(400, f"Unsupported sort_key or sort_dir: {sort_key} {sort_dir}")

        def key(image: Image) -> Any:
            if sort_key in ("created_at", "updated_at"):
                return (image.created, image.seq)
            return (getattr(image, sort_key), image.seq)

        images.sort(key=key, reverse=sort_dir == "desc")
        cap = self.core.max_limit("image") or 1000
        page, full = paginate(
            images, req, key=lambda i: i.id, default_limit=min(DEFAULT_LIMIT, cap), max_limit=cap
        )
        body: dict[str, Any] = {
            "images": [self.view(i) for i in page],
            "first": "/v2/images",
            "schema": "/v2/schemas/images",
        }
        if full:
            params = [(k, v) for k, values in req.query.items() if k != "marker" for v in values]
            params.append(("marker", page[-1].id))
            body["next"] = f"/v2/images?{urlencode(params)}"
        return json_response(200, body)

    def get_image(self, req: Request) -> Response:
        """GET /v2/images/{id}."""
        image = self.state.images.get(req.params["image_id"])
        if image is None or image not in self._visible(req):
            raise ApiError(404, f"No image found with ID {req.params['image_id']}")
        return json_response(200, self.view(image))
