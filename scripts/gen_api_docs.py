#!/usr/bin/env python3
"""Write docs/api.md from the broker's own OpenAPI document.

Loads the FastAPI application with throwaway settings (a SQLite file in a temporary
directory that is never opened), calls ``app.openapi()`` and renders every path and
method: summary, description, parameters, request body and responses, then every schema
the operations refer to. Rerun it whenever the API changes::

    .venv/bin/python scripts/gen_api_docs.py           # rewrite docs/api.md
    .venv/bin/python scripts/gen_api_docs.py --check   # exit 1 if docs/api.md is stale
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "docs" / "api.md"
# FastAPI's built-in validation schemas: the broker answers with problem+json instead.
FASTAPI_VALIDATION = {"HTTPValidationError", "ValidationError"}
METHODS = ("get", "post", "put", "patch", "delete")


def load_openapi() -> dict[str, Any]:
    from deskbroker.api.app import create_app
    from deskbroker.config import Settings
    from deskbroker.services.context import BrokerContext

    with tempfile.TemporaryDirectory(prefix="deskbroker-apidocs-") as tmp:
        settings = Settings(
            data_dir=Path(tmp),
            database_url=f"sqlite:///{tmp}/unused.db",
            secret_key=secrets.token_urlsafe(32),
        )
        ctx = BrokerContext.from_settings(settings)
        try:
            document: dict[str, Any] = create_app(ctx).openapi()
        finally:
            ctx.db.dispose()
    return document


def ref_name(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


def anchor(name: str) -> str:
    return "schema-" + name.lower()


def cell(text: str) -> str:
    """Make text safe inside a markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ").strip()


def type_of(schema: dict[str, Any]) -> str:
    """A short human type: ``string``, ``array of FilterIn``, ``integer or null``..."""
    if "$ref" in schema:
        name = ref_name(schema["$ref"])
        if name in FASTAPI_VALIDATION:
            return "problem+json"
        return f"[{name}](#{anchor(name)})"
    for combinator in ("anyOf", "oneOf", "allOf"):
        if combinator in schema:
            parts = [type_of(s) for s in schema[combinator]]
            unique = list(dict.fromkeys(parts))
            return " or ".join(unique)
    if "enum" in schema:
        return "one of " + ", ".join(f"`{v}`" for v in schema["enum"])
    if "const" in schema:
        return f"`{schema['const']}`"
    kind = schema.get("type")
    if kind == "array":
        return "array of " + type_of(schema.get("items", {}))
    if kind == "object" or (kind is None and "additionalProperties" in schema):
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict) and extra:
            return "object of " + type_of(extra)
        return "object"
    if isinstance(kind, list):
        return " or ".join(str(k) for k in kind)
    if kind is None:
        return "any"
    fmt = schema.get("format")
    return f"{kind} ({fmt})" if fmt else str(kind)


def number(value: Any) -> str:
    """``0.0`` as ``0``: pydantic hands integer limits over as floats."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def constraints(schema: dict[str, Any]) -> str:
    """Limits, pattern and default, gathered from a schema and its nullable variants."""
    found: list[str] = []
    variants = [schema, *schema.get("anyOf", []), *schema.get("oneOf", [])]
    for variant in variants:
        for key, label in (
            ("minLength", "min length"),
            ("maxLength", "max length"),
            ("minimum", "≥"),
            ("maximum", "≤"),
            ("exclusiveMinimum", ">"),
            ("exclusiveMaximum", "<"),
            ("minItems", "min items"),
            ("maxItems", "max items"),
        ):
            if key in variant:
                item = f"{label} {number(variant[key])}"
                if item not in found:
                    found.append(item)
        if "pattern" in variant:
            found.append(f"pattern `{variant['pattern']}`")
        items = variant.get("items")
        if isinstance(items, dict):
            for key, label in (("minLength", "item min length"), ("maxLength", "item max length")):
                if key in items:
                    found.append(f"{label} {items[key]}")
    if "default" in schema:
        found.append(f"default `{json.dumps(schema['default'], ensure_ascii=False)}`")
    return ", ".join(found)


def schema_refs(node: Any, seen: set[str]) -> None:
    """Collect every schema name reachable from ``node``."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            seen.add(ref_name(ref))
        for value in node.values():
            schema_refs(value, seen)
    elif isinstance(node, list):
        for value in node:
            schema_refs(value, seen)


def fields_table(schema: dict[str, Any]) -> list[str]:
    properties: dict[str, Any] = schema.get("properties", {})
    if not properties:
        return ["(no fields)" if schema.get("type") == "object" else f"Type: {type_of(schema)}"]
    required = set(schema.get("required", []))
    lines = ["| field | type | required | constraints | description |", "|---|---|---|---|---|"]
    for name, prop in properties.items():
        lines.append(
            "| `{}` | {} | {} | {} | {} |".format(
                name,
                cell(type_of(prop)),
                "yes" if name in required else "",
                cell(constraints(prop)),
                cell(prop.get("description", "")),
            )
        )
    if schema.get("additionalProperties") is False:
        lines.append("")
        lines.append("Unknown fields are refused (422).")
    return lines


def render_operation(
    path: str, method: str, op: dict[str, Any], schemas: dict[str, Any]
) -> list[str]:
    lines = [f"### `{method.upper()} {path}`", ""]
    if op.get("summary"):
        lines += [f"{op['summary']}.", ""]
    if op.get("x-permission"):
        lines += [f"Permission: `{op['x-permission']}`.", ""]
    if op.get("description"):
        lines += [op["description"].strip(), ""]
    lines += [
        "Authentication: " + ("bearer token." if op.get("security") else "none."),
        "",
    ]
    params = op.get("parameters", [])
    if params:
        lines += [
            "| parameter | in | type | required | constraints | description |",
            "|---|---|---|---|---|---|",
        ]
        for p in params:
            schema = p.get("schema", {})
            lines.append(
                "| `{}` | {} | {} | {} | {} | {} |".format(
                    p["name"],
                    p.get("in", ""),
                    cell(type_of(schema)),
                    "yes" if p.get("required") else "",
                    cell(constraints(schema)),
                    cell(p.get("description", "")),
                )
            )
        lines.append("")
    body = op.get("requestBody")
    if body:
        content = body.get("content", {})
        for media, spec in content.items():
            schema = spec.get("schema", {})
            if "$ref" in schema:
                name = ref_name(schema["$ref"])
                lines += [f"Request body (`{media}`): [{name}](#{anchor(name)})", ""]
                lines += fields_table(schemas.get(name, {}))
            else:
                lines += [f"Request body (`{media}`): {type_of(schema)}"]
            lines.append("")
    lines += ["| status | meaning | body |", "|---|---|---|"]
    for status, response in op.get("responses", {}).items():
        description = response.get("description", "")
        content = response.get("content", {})
        shape = ""
        for media, spec in content.items():
            schema = spec.get("schema", {})
            if "$ref" in schema and ref_name(schema["$ref"]) in FASTAPI_VALIDATION:
                description, shape = "Invalid input", "`application/problem+json`"
            elif schema and schema != {}:
                shape = type_of(schema)
                if schema.get("type") == "object" and not schema.get("properties"):
                    shape = "JSON object"
            else:
                shape = f"`{media}`"
        lines.append(f"| {status} | {cell(description)} | {cell(shape)} |")
    lines.append("")
    return lines


INTRO = """\
# deskbroker HTTP API

<!-- Generated by scripts/gen_api_docs.py from the broker's OpenAPI document.
     Do not edit by hand: run `.venv/bin/python scripts/gen_api_docs.py`. -->

This reference is generated from the OpenAPI document the broker serves at
`/api/v1/openapi.json` (interactive: `/api/v1/docs`). API version: **{version}**.

- **Base path**: `/api/v1` for the API; `/healthz`, `/readyz` and `/metrics` sit at the root.
- **Authentication**: `POST /api/v1/auth/login` returns a short-lived signed bearer token;
  send it as `Authorization: Bearer <token>`. Admin routes need the `global_admin` or
  `tenant_admin` role to write, and also accept `helpdesk` and `auditor` to read. A tenant
  admin sees only their own tenant. `/api/v1/agent/events` takes a desktop's agent token
  instead, minted by `POST /api/v1/admin/desktops/{{desktop_id}}/agent-token`.
- **Bodies** are JSON; unknown fields are refused, and bodies over 1 MiB get 413.
- **Errors** are `application/problem+json` documents with `type`, `title`, `status` and
  a `detail` sentence meant for a person; validation failures (422) add `errors`, a list of
  `{{field, message}}`. Every route can answer 401 (no or bad token), 403 (role or tenant),
  404, 409 (conflict with the current state) and 422, even where the table below lists
  only the success status.
- **Listings** take `limit` (1-1000) and `offset` and return
  `{{"items": [...], "total": N, "limit": L, "offset": O}}`. Other query parameters are
  exact-match filters; each listing names the filters it knows in its description, and an
  unknown filter is refused with 422.
"""


def render(document: dict[str, Any]) -> str:
    schemas: dict[str, Any] = document.get("components", {}).get("schemas", {})
    out = [INTRO.format(version=document.get("info", {}).get("version", "?"))]
    groups: dict[str, list[tuple[str, str, dict[str, Any]]]] = {}
    for path, item in document.get("paths", {}).items():
        for method in METHODS:
            if method in item:
                op = item[method]
                tag = (op.get("tags") or ["other"])[0]
                groups.setdefault(tag, []).append((path, method, op))
    out.append("## Contents\n")
    for tag, ops in groups.items():
        out.append(f"- **{tag}**: " + ", ".join(f"`{m.upper()} {p}`" for p, m, _ in ops))
    out.append("")
    used: set[str] = set()
    for tag, ops in groups.items():
        out.append(f"## {tag}\n")
        for path, method, op in ops:
            out += render_operation(path, method, op, schemas)
            schema_refs(op, used)
    # Schemas reached from the operations, and the schemas they refer to in turn.
    pending = sorted(used)
    while pending:
        name = pending.pop()
        found: set[str] = set()
        schema_refs(schemas.get(name, {}), found)
        for extra in found - used:
            used.add(extra)
            pending.append(extra)
    out.append("## Schemas\n")
    for name in sorted(used - FASTAPI_VALIDATION):
        schema = schemas.get(name)
        if schema is None:
            continue
        out.append(f'<a id="{anchor(name)}"></a>\n')
        out.append(f"### {name}\n")
        if schema.get("description"):
            out.append(schema["description"].strip() + "\n")
        if "enum" in schema:
            out.append("One of " + ", ".join(f"`{v}`" for v in schema["enum"]) + ".\n")
            continue
        out += fields_table(schema)
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate docs/api.md from OpenAPI.")
    parser.add_argument("--check", action="store_true", help="fail if docs/api.md is stale")
    parser.add_argument("--output", type=Path, default=TARGET, help="where to write")
    args = parser.parse_args(argv)
    text = render(load_openapi())
    if args.check:
        current = args.output.read_text() if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is out of date: run scripts/gen_api_docs.py", file=sys.stderr)
            return 1
        print(f"{args.output} is up to date")
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
