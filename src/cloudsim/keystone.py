"""Keystone v3: tokens (password, application credential, token), catalog, projects."""

from __future__ import annotations

import secrets
import time
import uuid
from typing import Any

from cloudsim.core import AuthContext, Core, Service, stable_id
from cloudsim.state import AppCredential, Project, Token, User
from cloudsim.web import (
    ApiError,
    Request,
    Response,
    empty,
    iso_micro,
    json_response,
    parse_time,
)

_UNAUTHORIZED = "The request you have made requires authentication."
_MEDIA = [{"base": "application/json", "type": "application/vnd.openstack.identity-v3+json"}]

#: (service type, service name, path) of every catalog entry.
CATALOG = [
    ("identity", "keystone", "/identity"),
    ("compute", "nova", "/compute/v2.1"),
    ("image", "glance", "/image"),
    ("network", "neutron", "/network"),
    ("block-storage", "cinder", "/volume/v3"),
    ("volumev3", "cinderv3", "/volume/v3"),
]


def version_doc(base: str) -> dict[str, Any]:
    """The Keystone v3 version document."""
    return {
        "id": "v3.14",
        "status": "stable",
        "updated": "2020-04-07T00:00:00Z",
        "links": [{"rel": "self", "href": f"{base}/identity/v3/"}],
        "media-types": _MEDIA,
    }


def versions_response(base: str) -> Response:
    """GET /identity (and GET / of the simulator): 300 Multiple Choices, as Keystone."""
    return json_response(300, {"versions": {"values": [version_doc(base)]}})


def catalog(base: str, region: str) -> list[dict[str, Any]]:
    """The service catalog pointing back at this simulator."""
    out = []
    for service_type, name, path in CATALOG:
        endpoints = [
            {
                "id": stable_id("endpoint", service_type, iface),
                "interface": iface,
                "region": region,
                "region_id": region,
                "url": base + path,
            }
            for iface in ("public", "internal", "admin")
        ]
        out.append(
            {
                "id": stable_id("service", service_type),
                "type": service_type,
                "name": name,
                "endpoints": endpoints,
            }
        )
    return out


def unauthorized(message: str = _UNAUTHORIZED) -> ApiError:
    """A Keystone 401."""
    return ApiError(401, message)


def authenticate(core: Core, token_id: str | None) -> AuthContext:
    """Validate a token as keystonemiddleware would; 401 when missing, unknown or expired."""
    if not token_id:
        raise unauthorized()
    token = core.state.tokens.get(token_id)
    if token is None or token.expires_at <= time.time():
        raise unauthorized("The request you have made requires authentication.")
    user = core.state.users.get(token.user_id)
    if user is None:
        raise unauthorized()
    project = core.state.projects.get(token.project_id) if token.project_id else None
    return AuthContext(token, user, project, token.roles)


class Keystone(Service):
    """The identity service under /identity."""

    name = "identity"
    prefix = "/identity"

    def register(self) -> None:
        """Add the Keystone routes."""
        add = self.router.add
        add("GET", "", lambda req: versions_response(self.core.base_url))
        add(
            "GET",
            "/v3",
            lambda req: json_response(200, {"version": version_doc(self.core.base_url)}),
        )
        add("POST", "/v3/auth/tokens", self.issue)
        add("GET", "/v3/auth/tokens", self.validate)
        add("HEAD", "/v3/auth/tokens", self.check)
        add("DELETE", "/v3/auth/tokens", self.revoke)
        add("GET", "/v3/auth/catalog", self.get_catalog)
        add("GET", "/v3/auth/projects", self.auth_projects)
        add("GET", "/v3/auth/domains", self.auth_domains)
        add("GET", "/v3/projects", self.list_projects)
        add("GET", "/v3/projects/{project_id}", self.get_project)
        add("GET", "/v3/domains", self.list_domains)
        add("GET", "/v3/domains/{domain_id}", self.get_domain)
        add("GET", "/v3/roles", self.list_roles)
        add("GET", "/v3/users/{user_id}", self.get_user)
        add("GET", "/v3/users/{user_id}/projects", self.user_projects)
        add("GET", "/v3/users/{user_id}/application_credentials", self.list_app_creds)
        add("POST", "/v3/users/{user_id}/application_credentials", self.create_app_cred)
        add("GET", "/v3/users/{user_id}/application_credentials/{cred_id}", self.get_app_cred)
        add("DELETE", "/v3/users/{user_id}/application_credentials/{cred_id}", self.delete_app_cred)

    def is_public(self, req: Request) -> bool:
        """Version documents and token creation need no token."""
        return (req.method == "GET" and req.path.rstrip("/") in ("/identity", "/identity/v3")) or (
            req.method == "POST" and req.path.rstrip("/") == "/identity/v3/auth/tokens"
        )

    def render_error(self, err: ApiError) -> Response:
        """Keystone's ``{"error": {code, title, message}}`` body."""
        titles = {
            400: "Bad Request",
            401: "Unauthorized",
            403: "Forbidden",
            404: "Not Found",
            409: "Conflict",
            500: "Internal Server Error",
            503: "Service Unavailable",
        }
        headers = dict(err.headers)
        if err.status == 401:
            headers.setdefault("WWW-Authenticate", f'Keystone uri="{self.core.base_url}/identity"')
        return json_response(
            err.status,
            {
                "error": {
                    "code": err.status,
                    "title": titles.get(err.status, "Error"),
                    "message": err.message,
                }
            },
            headers,
        )

    # -- token issue --------------------------------------------------------------------
    def issue(self, req: Request) -> Response:
        """POST /v3/auth/tokens → 201 with X-Subject-Token."""
        auth = req.json_object("auth")
        identity = auth.get("identity")
        if not isinstance(identity, dict) or not isinstance(identity.get("methods"), list):
            raise ApiError(400, "Expecting to find identity in auth.")
        methods: list[str] = [str(m) for m in identity["methods"]]
        scope = auth.get("scope")
        cred: AppCredential | None = None
        if "application_credential" in methods:
            cred = self._app_cred(identity.get("application_credential"))
            if scope:
                raise unauthorized("Application credentials cannot request a scope.")
            user = self.state.users[cred.user_id]
            project: Project | None = self.state.projects.get(cred.project_id)
            domain_id = None
            roles = list(cred.roles)
        else:
            if "password" in methods:
                user = self._password_user(identity.get("password"))
            elif "token" in methods:
                old = authenticate(self.core, (identity.get("token") or {}).get("id"))
                user = old.user
            else:
                raise unauthorized()
            project, domain_id, roles = self._scope(user, scope)
        now = time.time()
        token = Token(
            id="gAAAAA" + secrets.token_urlsafe(96),
            user_id=user.id,
            project_id=project.id if project else None,
            domain_id=domain_id,
            methods=methods,
            roles=roles,
            issued_at=now,
            expires_at=now + self.core.config.token_ttl,
            app_cred_id=cred.id if cred else None,
            audit_id=secrets.token_urlsafe(16)[:22],
        )
        tokens = self.state.tokens
        if len(tokens) > 20_000:
            for stale in [t for t, v in tokens.items() if v.expires_at <= now]:
                del tokens[stale]
        tokens[token.id] = token
        return json_response(201, self._token_body(token), {"X-Subject-Token": token.id})

    def _user_ref(self, ref: Any) -> User:
        if not isinstance(ref, dict):
            raise ApiError(400, "Expecting to find user in password.")
        if "id" in ref:
            user = self.state.users.get(str(ref["id"]))
        else:
            if "domain" not in ref:
                raise ApiError(400, "Expecting to find domain in user.")
            domain = self.state.domain_by_name_or_id(ref["domain"])
            user = self.state.user_by_name(str(ref.get("name")), domain.id) if domain else None
        if user is None:
            raise unauthorized()
        return user

    def _password_user(self, block: Any) -> User:
        if not isinstance(block, dict):
            raise ApiError(400, "Expecting to find password in identity.")
        ref = block.get("user")
        user = self._user_ref(ref)
        assert isinstance(ref, dict)
        if not secrets.compare_digest(str(ref.get("password", "")), user.password):
            raise unauthorized()
        return user

    def _app_cred(self, block: Any) -> AppCredential:
        if not isinstance(block, dict) or "secret" not in block:
            raise ApiError(400, "Expecting to find secret in application_credential.")
        cred: AppCredential | None
        if "id" in block:
            cred = self.state.app_creds.get(str(block["id"]))
        else:
            user = self._user_ref(block.get("user"))
            cred = next(
                (
                    c
                    for c in self.state.app_creds.values()
                    if c.user_id == user.id and c.name == block.get("name")
                ),
                None,
            )
        if cred is None or not secrets.compare_digest(str(block["secret"]), cred.secret):
            raise unauthorized()
        if cred.expires_at is not None and cred.expires_at <= time.time():
            raise unauthorized("The application credential has expired.")
        return cred

    def _scope(self, user: User, scope: Any) -> tuple[Project | None, str | None, list[str]]:
        if scope is None or scope == "unscoped":
            default = user.default_project_id
            if default and default in user.roles and default in self.state.projects:
                return self.state.projects[default], None, list(user.roles[default])
            return None, None, []
        if not isinstance(scope, dict):
            raise ApiError(400, "Invalid scope.")
        if "project" in scope:
            ref = scope["project"] or {}
            if "id" in ref:
                project = self.state.projects.get(str(ref["id"]))
            else:
                domain = self.state.domain_by_name_or_id(ref.get("domain"))
                if domain is None:
                    raise unauthorized()
                project = self.state.project_by_name(str(ref.get("name")), domain.id)
            if project is None or project.id not in user.roles:
                raise unauthorized()
            return project, None, list(user.roles[project.id])
        if "domain" in scope:
            domain = self.state.domain_by_name_or_id(scope["domain"])
            if domain is None or domain.id != user.domain_id:
                raise unauthorized()
            return None, domain.id, ["reader"]
        if "system" in scope:
            if not any("admin" in roles for roles in user.roles.values()):
                raise unauthorized()
            return None, None, ["admin", "reader"]
        raise ApiError(400, "Invalid scope.")

    def _domain_ref(self, domain_id: str) -> dict[str, str]:
        domain = self.state.domains[domain_id]
        return {"id": domain.id, "name": domain.name}

    def _token_body(self, token: Token) -> dict[str, Any]:
        user = self.state.users[token.user_id]
        body: dict[str, Any] = {
            "methods": token.methods,
            "user": {
                "domain": self._domain_ref(user.domain_id),
                "id": user.id,
                "name": user.name,
                "password_expires_at": None,
            },
            "audit_ids": [token.audit_id],
            "expires_at": iso_micro(token.expires_at),
            "issued_at": iso_micro(token.issued_at),
        }
        if token.project_id:
            project = self.state.projects[token.project_id]
            body["project"] = {
                "domain": self._domain_ref(project.domain_id),
                "id": project.id,
                "name": project.name,
            }
            body["is_domain"] = False
        elif token.domain_id:
            body["domain"] = self._domain_ref(token.domain_id)
        if token.roles:
            body["roles"] = [{"id": stable_id("role", r), "name": r} for r in token.roles]
            body["catalog"] = catalog(self.core.base_url, self.core.config.region)
        if token.app_cred_id:
            cred = self.state.app_creds[token.app_cred_id]
            body["application_credential"] = {
                "id": cred.id,
                "name": cred.name,
                "restricted": not cred.unrestricted,
            }
        return {"token": body}

    # -- token inspect ------------------------------------------------------------------
    def _subject(self, req: Request) -> Token:
        ctx = authenticate(self.core, req.header("X-Subject-Token"))
        return ctx.token

    def validate(self, req: Request) -> Response:
        """GET /v3/auth/tokens: body of the X-Subject-Token token."""
        token = self._subject(req)
        return json_response(200, self._token_body(token), {"X-Subject-Token": token.id})

    def check(self, req: Request) -> Response:
        """HEAD /v3/auth/tokens."""
        self._subject(req)
        return empty(200)

    def revoke(self, req: Request) -> Response:
        """DELETE /v3/auth/tokens: the subject token stops working."""
        token = self._subject(req)
        token.expires_at = 0.0
        return empty(204)

    def get_catalog(self, req: Request) -> Response:
        """GET /v3/auth/catalog."""
        return json_response(
            200,
            {
                "catalog": catalog(self.core.base_url, self.core.config.region),
                "links": {"self": f"{self.core.base_url}/identity/v3/auth/catalog"},
            },
        )

    # -- projects, domains, users -------------------------------------------------------
    def _project_view(self, project: Project) -> dict[str, Any]:
        return {
            "id": project.id,
            "name": project.name,
            "domain_id": project.domain_id,
            "description": "",
            "enabled": True,
            "parent_id": project.domain_id,
            "is_domain": False,
            "tags": [],
            "options": {},
            "links": {"self": f"{self.core.base_url}/identity/v3/projects/{project.id}"},
        }

    def _projects(self, projects: list[Project], kind: str = "projects") -> Response:
        return json_response(
            200,
            {
                kind: [self._project_view(p) for p in projects],
                "links": {"self": None, "next": None, "previous": None},
            },
        )

    def auth_projects(self, req: Request) -> Response:
        """GET /v3/auth/projects: projects the caller has a role on."""
        ctx: AuthContext = req.auth
        return self._projects(
            [self.state.projects[p] for p in ctx.user.roles if p in self.state.projects]
        )

    def auth_domains(self, req: Request) -> Response:
        """GET /v3/auth/domains."""
        return json_response(
            200, {"domains": [], "links": {"self": None, "next": None, "previous": None}}
        )

    def list_projects(self, req: Request) -> Response:
        """GET /v3/projects: all for admins, else the caller's."""
        ctx: AuthContext = req.auth
        projects = list(self.state.projects.values())
        if not ctx.is_admin:
            projects = [p for p in projects if p.id in ctx.user.roles]
        name = req.arg("name")
        if name:
            projects = [p for p in projects if p.name == name]
        return self._projects(projects)

    def user_projects(self, req: Request) -> Response:
        """GET /v3/users/{id}/projects."""
        user = self._own_user(req)
        return self._projects(
            [self.state.projects[p] for p in user.roles if p in self.state.projects]
        )

    def get_project(self, req: Request) -> Response:
        """GET /v3/projects/{id}."""
        ctx: AuthContext = req.auth
        project = self.state.projects.get(req.params["project_id"])
        if project is None or (not ctx.is_admin and project.id not in ctx.user.roles):
            raise ApiError(404, f"Could not find project: {req.params['project_id']}.")
        return json_response(200, {"project": self._project_view(project)})

    def _domain_view(self, domain_id: str) -> dict[str, Any]:
        domain = self.state.domains[domain_id]
        return {
            "id": domain.id,
            "name": domain.name,
            "description": "",
            "enabled": True,
            "tags": [],
            "options": {},
            "links": {"self": f"{self.core.base_url}/identity/v3/domains/{domain.id}"},
        }

    def list_domains(self, req: Request) -> Response:
        """GET /v3/domains."""
        return json_response(
            200,
            {
                "domains": [self._domain_view(d) for d in self.state.domains],
                "links": {"self": None, "next": None, "previous": None},
            },
        )

    def get_domain(self, req: Request) -> Response:
        """GET /v3/domains/{id}."""
        if req.params["domain_id"] not in self.state.domains:
            raise ApiError(404, f"Could not find domain: {req.params['domain_id']}.")
        return json_response(200, {"domain": self._domain_view(req.params["domain_id"])})

    def list_roles(self, req: Request) -> Response:
        """GET /v3/roles."""
        roles: list[dict[str, Any]] = [
            {
                "id": stable_id("role", r),
                "name": r,
                "domain_id": None,
                "description": None,
                "options": {},
            }
            for r in ("admin", "member", "reader")
        ]
        return json_response(
            200, {"roles": roles, "links": {"self": None, "next": None, "previous": None}}
        )

    def _own_user(self, req: Request) -> User:
        ctx: AuthContext = req.auth
        user_id = req.params["user_id"]
        if user_id != ctx.user.id and not ctx.is_admin:
            raise ApiError(403, "You are not authorized to perform the requested action.")
        user = self.state.users.get(user_id)
        if user is None:
            raise ApiError(404, f"Could not find user: {user_id}.")
        return user

    def get_user(self, req: Request) -> Response:
        """GET /v3/users/{id}."""
        user = self._own_user(req)
        return json_response(
            200,
            {
                "user": {
                    "id": user.id,
                    "name": user.name,
                    "domain_id": user.domain_id,
                    "enabled": True,
                    "default_project_id": user.default_project_id,
                    "password_expires_at": None,
                    "options": {},
                    "links": {"self": f"{self.core.base_url}/identity/v3/users/{user.id}"},
                }
            },
        )

    # -- application credentials --------------------------------------------------------
    def _cred_view(self, cred: AppCredential, secret: bool = False) -> dict[str, Any]:
        view: dict[str, Any] = {
            "id": cred.id,
            "name": cred.name,
            "description": cred.description,
            "expires_at": iso_micro(cred.expires_at) if cred.expires_at else None,
            "project_id": cred.project_id,
            "user_id": cred.user_id,
            "roles": [
                {"id": stable_id("role", r), "name": r, "domain_id": None} for r in cred.roles
            ],
            "unrestricted": cred.unrestricted,
            "access_rules": [],
            "links": {
                "self": f"{self.core.base_url}/identity/v3/users/{cred.user_id}/"
                f"application_credentials/{cred.id}"
            },
        }
        if secret:
            view["secret"] = cred.secret
        return view

    def create_app_cred(self, req: Request) -> Response:
        """POST /v3/users/{id}/application_credentials → 201 with the secret."""
        ctx: AuthContext = req.auth
        user = self._own_user(req)
        if ctx.token.app_cred_id:
            cred = self.state.app_creds.get(ctx.token.app_cred_id)
            if cred is not None and not cred.unrestricted:
                raise ApiError(
                    403,
                    "Using method 'application_credential' is not allowed "
                    "for managing additional application credentials.",
                )
        body = req.json_object("application_credential")
        name = body.get("name")
        if not isinstance(name, str) or not name:
            raise ApiError(400, "'name' is a required property")
        if any(c.user_id == user.id and c.name == name for c in self.state.app_creds.values()):
            raise ApiError(
                409,
                "Conflict occurred attempting to store "
                f"application_credential - Duplicate name, {name}.",
            )
        roles = [str(r.get("name")) for r in body.get("roles") or [] if isinstance(r, dict)]
        expires = body.get("expires_at")
        cred = AppCredential(
            id=uuid.uuid4().hex,
            name=name,
            secret=str(body.get("secret") or secrets.token_urlsafe(64)),
            user_id=user.id,
            project_id=ctx.project_id,
            roles=roles or list(ctx.roles),
            description=str(body.get("description") or ""),
            expires_at=parse_time(expires) if expires else None,
            unrestricted=bool(body.get("unrestricted", False)),
        )
        self.state.app_creds[cred.id] = cred
        return json_response(201, {"application_credential": self._cred_view(cred, True)})

    def list_app_creds(self, req: Request) -> Response:
        """GET /v3/users/{id}/application_credentials."""
        user = self._own_user(req)
        creds = [self._cred_view(c) for c in self.state.app_creds.values() if c.user_id == user.id]
        return json_response(
            200,
            {
                "application_credentials": creds,
                "links": {"self": None, "next": None, "previous": None},
            },
        )

    def _cred(self, req: Request) -> AppCredential:
        user = self._own_user(req)
        cred = self.state.app_creds.get(req.params["cred_id"])
        if cred is None or cred.user_id != user.id:
            raise ApiError(404, f"Could not find application credential: {req.params['cred_id']}.")
        return cred

    def get_app_cred(self, req: Request) -> Response:
        """GET /v3/users/{id}/application_credentials/{cred_id}."""
        return json_response(200, {"application_credential": self._cred_view(self._cred(req))})

    def delete_app_cred(self, req: Request) -> Response:
        """DELETE /v3/users/{id}/application_credentials/{cred_id}: its tokens die too."""
        cred = self._cred(req)
        del self.state.app_creds[cred.id]
        for token in self.state.tokens.values():
            if token.app_cred_id == cred.id:
                token.expires_at = 0.0
        return empty(204)
