"""``deskbroker config``: a tenant's configuration as a YAML (or JSON) file, through the
admin API (``/api/v1/admin/config``), so it works against any broker the operator can
reach with a token: an API token in ``DESKBROKER_TOKEN`` for scripts, else the token
``deskbroker login`` keeps."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
import yaml
from rich.console import Console
from rich.table import Table

from deskbroker.client.login import default_token_file, load_token

config_app = typer.Typer(
    no_args_is_help=True, help="Configuration as code: export, plan and apply a tenant's"
)
console = Console()
err = Console(stderr=True)

# A secret the file does not hold: filled here from the operator's environment, never by
# the broker (whose environment is the operator's, not a tenant's).
_ENV_REF = re.compile(r"^\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}$")
_SECRET_SECTIONS = ("centers", "identity_sources")

Url = Annotated[
    str | None,
    typer.Option(help="The broker's URL (default $DESKBROKER_URL, or the login's broker)"),
]
Token = Annotated[
    str | None,
    typer.Option(
        help="A bearer token (default $DESKBROKER_TOKEN, else `deskbroker login`'s)",
        show_default=False,
    ),
]
TenantId = Annotated[
    str | None, typer.Option("--tenant-id", help="Another tenant (a global administrator)")
]
File = Annotated[Path, typer.Argument(help="The document: YAML, or JSON", exists=True)]


class ConfigError(Exception):
    """What stops a command, in words."""


def _endpoint(url: str | None, token: str | None) -> tuple[str, str]:
    token = token or os.environ.get("DESKBROKER_TOKEN")
    url = url or os.environ.get("DESKBROKER_URL")
    if token is None:
        stored = load_token(default_token_file())
        if stored is None or stored.expires_at <= time.time():
            raise ConfigError(
                "no token: set DESKBROKER_TOKEN to an API token, or sign in with `deskbroker login`"
            )
        token, url = stored.token, url or stored.url
    return (url or "http://127.0.0.1:8080").rstrip("/"), token


def _call(
    method: str,
    path: str,
    url: str | None,
    token: str | None,
    tenant_id: str | None,
    body: dict[str, Any] | None = None,
    force: bool = False,
) -> dict[str, Any]:
    base, bearer = _endpoint(url, token)
    params: dict[str, str] = {"tenant_id": tenant_id} if tenant_id else {}
    if force:
        params["force"] = "true"
    try:
        response = httpx.request(
            method,
            f"{base}/api/v1/admin/config{path}",
            params=params or None,
            json=body,
            headers={"Authorization": f"Bearer {bearer}"},
            timeout=120,
        )
    except httpx.HTTPError as exc:
        raise ConfigError(f"the broker at {base} did not answer ({exc})") from exc
    try:
        answer = response.json()
    except ValueError:
        answer = {}
    if response.status_code != 200:
        detail = answer.get("detail") if isinstance(answer, dict) else None
        raise ConfigError(detail or f"the broker answered HTTP {response.status_code}")
    if not isinstance(answer, dict):
        raise ConfigError("the broker's answer is not a document")
    return answer


def read_document(path: Path, environ: dict[str, str] | None = None) -> dict[str, Any]:
    """The document in ``path``, its ``${env:NAME}`` secrets filled from the environment."""
    try:
        text = path.read_text(encoding="utf-8")
        document = yaml.safe_load(text) if path.suffix != ".json" else json.loads(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: not a YAML or JSON document ({exc})") from exc
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: the document must be a mapping of sections")
    env = os.environ if environ is None else environ
    for section in _SECRET_SECTIONS:
        entries = document.get(section)
        for i, entry in enumerate(entries if isinstance(entries, list) else []):
            secrets = entry.get("secrets") if isinstance(entry, dict) else None
            if not isinstance(secrets, dict):
                continue
            for key, value in secrets.items():
                found = _ENV_REF.match(value) if isinstance(value, str) else None
                if found is None:
                    continue
                if found.group(1) not in env:
                    raise ConfigError(
                        f"{section}[{i}].secrets.{key}: the environment variable "
                        f"{found.group(1)} is not set"
                    )
                secrets[key] = env[found.group(1)]
    return document


def show_outcome(outcome: dict[str, Any], out: Console) -> None:
    """The changes, object by object, as a plan shows them."""
    signs = {
        "create": ("+", "green"),
        "update": ("~", "yellow"),
        "delete": ("-", "red"),
        "release": ("!", "red"),
    }
    if outcome["changes"]:
        table = Table(show_header=True, header_style="bold", box=None)
        for column in ("", "what", "name", "fields"):
            table.add_column(column)
        for change in outcome["changes"]:
            sign, colour = signs.get(change["action"], ("?", "white"))
            table.add_row(
                f"[{colour}]{sign}[/]",
                f"[{colour}]{change['action']}[/] {change['section'].replace('_', ' ')}",
                change["name"],
                ", ".join(change["fields"]),
            )
        out.print(table)
    counts = {a: sum(c["action"] == a for c in outcome["changes"]) for a in signs}
    verb = "changed" if outcome["applied"] else "to change"
    out.print(
        f"{counts['create']} to create, {counts['update']} to update, {counts['delete']} to "
        f"delete, {counts['release']} assignments to release; {outcome['unchanged']} unchanged"
        if not outcome["applied"]
        else f"{counts['create']} created, {counts['update']} updated, {counts['delete']} "
        f"deleted, {counts['release']} assignments released; {outcome['unchanged']} unchanged",
        highlight=False,
    )
    if not outcome["changes"] and not outcome["refused"]:
        out.print(f"nothing {verb}: the broker already matches the document")
    refused = outcome.get("refused")
    if refused:
        out.print(
            f"[bold red]refused ({refused['status']}):[/] {refused['detail']}", highlight=False
        )


@config_app.command("export")
def export_command(
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write here (default stdout)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of YAML")] = False,
    url: Url = None,
    token: Token = None,
    tenant_id: TenantId = None,
) -> None:
    """Write the tenant's configuration as one document (secrets as `stored`)."""
    try:
        document = _call("GET", "", url, token, tenant_id)
    except ConfigError as exc:
        err.print(f"[red]{exc}[/]", highlight=False)
        raise typer.Exit(1) from exc
    text = (
        json.dumps(document, indent=2) + "\n"
        if as_json or (output is not None and output.suffix == ".json")
        else yaml.safe_dump(document, sort_keys=False, allow_unicode=True)
    )
    if output is None:
        print(text, end="")
    else:
        output.write_text(text, encoding="utf-8")
        err.print(f"wrote {output}")


Force = Annotated[
    bool,
    typer.Option(
        "--force", help="release the assignments of a pool the document deletes, not refuse"
    ),
]


@config_app.command("plan")
def plan_command(
    file: File,
    url: Url = None,
    token: Token = None,
    tenant_id: TenantId = None,
    force: Force = False,
) -> None:
    """Show what applying FILE would change, object by object; changes nothing.
    Exits 2 when the broker would refuse it."""
    try:
        outcome = _call("POST", "/plan", url, token, tenant_id, read_document(file), force)
    except ConfigError as exc:
        err.print(f"[red]{exc}[/]", highlight=False)
        raise typer.Exit(1) from exc
    show_outcome(outcome, console)
    if outcome.get("refused"):
        raise typer.Exit(2)


@config_app.command("apply")
def apply_command(
    file: File,
    url: Url = None,
    token: Token = None,
    tenant_id: TenantId = None,
    force: Force = False,
) -> None:
    """Make the tenant's configuration what FILE says: every change in one transaction,
    or none."""
    try:
        outcome = _call("POST", "/apply", url, token, tenant_id, read_document(file), force)
    except ConfigError as exc:
        err.print(f"[red]nothing applied:[/] {exc}", highlight=False)
        raise typer.Exit(1) from exc
    show_outcome(outcome, console)
