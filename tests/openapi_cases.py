"""Malformed-request cases generated from the broker's own OpenAPI document.

Nothing here knows a particular endpoint: the cases come from the schemas, so a new
endpoint or field is swept without touching this module.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

HUGE = 300_000  # under the 1 MiB body limit, far over any field's limit
BIG_INTS = (10**20, 2**63)
CANDIDATE_TEXT = ("sweep", "08:00", "a", "10.0.0.0/8")


@dataclass(frozen=True)
class Operation:
    method: str
    path: str  # the OpenAPI template, e.g. /api/v1/admin/pools/{item_id}
    op: dict[str, Any]

    @property
    def path_params(self) -> list[str]:
        return [p["name"] for p in self.op.get("parameters", []) if p["in"] == "path"]

    @property
    def query_params(self) -> list[dict[str, Any]]:
        return [p for p in self.op.get("parameters", []) if p["in"] == "query"]

    @property
    def body_schema(self) -> dict[str, Any] | None:
        content = self.op.get("requestBody", {}).get("content", {})
        schema = content.get("application/json", {}).get("schema")
        return dict(schema) if schema else None

    @property
    def secured(self) -> bool:
        return bool(self.op.get("security"))

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


@dataclass(frozen=True)
class Case:
    """One request to send; ``must_fail`` says whether a 2xx is a bug."""

    label: str
    body: bytes | None = None
    content_type: str | None = "application/json"
    query: str = ""
    must_fail: bool = True
    headers: dict[str, str] = field(default_factory=dict)


def operations(doc: dict[str, Any]) -> list[Operation]:
    found = []
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            found.append(Operation(method.upper(), path, op))
    return found


class Schemas:
    """Resolves references and answers questions about one schema node."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.components: dict[str, Any] = doc.get("components", {}).get("schemas", {})

    def resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in schema:
            schema = self.components[schema["$ref"].rsplit("/", 1)[1]]
        if "allOf" in schema and len(schema["allOf"]) == 1:
            return self.resolve(schema["allOf"][0])
        return schema

    def nullable(self, schema: dict[str, Any]) -> bool:
        schema = self.resolve(schema)
        return any(self.resolve(v).get("type") == "null" for v in schema.get("anyOf", []))

    def core(self, schema: dict[str, Any]) -> dict[str, Any]:
        """The non-null alternative of an optional field."""
        schema = self.resolve(schema)
        for variant in schema.get("anyOf", []):
            resolved = self.resolve(variant)
            if resolved.get("type") != "null":
                return resolved
        return schema

    def kind(self, schema: dict[str, Any]) -> str:
        core = self.core(schema)
        if "enum" in core:
            return "enum"
        kind = core.get("type")
        if kind == "object" and not core.get("properties"):
            return "map"
        return str(kind or "any")

    def sample(self, schema: dict[str, Any]) -> Any:
        """A value the schema accepts (used to fill the fields a case does not break)."""
        core = self.core(schema)
        kind = self.kind(schema)
        if kind == "enum":
            return core["enum"][0]
        if kind == "string":
            pattern = core.get("pattern")
            size = max(1, int(core.get("minLength", 1)))
            for text in CANDIDATE_TEXT:
                text = text * size if len(text) < size else text
                if pattern is None or re.search(pattern, text):
                    return text
            raise AssertionError(f"no sample string matches {pattern!r}")
        if kind == "integer":
            return int(core.get("minimum", 1))
        if kind == "number":
            return 1.0
        if kind == "boolean":
            return True
        if kind == "array":
            return [self.sample(core.get("items", {})) for _ in range(core.get("minItems", 0))]
        if kind == "object":
            return {
                name: self.sample(prop)
                for name, prop in core["properties"].items()
                if name in core.get("required", [])
            }
        return {}

    def wrong_values(self, schema: dict[str, Any]) -> list[tuple[str, Any]]:
        """Values of the wrong type (or out of range) for a field."""
        core = self.core(schema)
        kind = self.kind(schema)
        values: list[tuple[str, Any]] = []
        if not self.nullable(schema):
            values.append(("null", None))
        nested_garbage = {"$ne": [1, {"a": None}], "": {"": []}}
        by_kind: dict[str, list[tuple[str, Any]]] = {
            "string": [("number", 12345), ("object", {"a": "b"})],
            "enum": [("unknown choice", "no-such-choice"), ("number", 7)],
            "integer": [
                ("text", "abc"),
                ("fraction", 1.5),
                *((f"out of range {n}", n) for n in BIG_INTS),
            ],
            "number": [("text", "abc"), ("object", {})],
            "boolean": [("text", "maybe"), ("object", {})],
            "array": [("text", "abc"), ("object", {"a": 1})],
            "object": [("text", "abc"), ("list", [1, 2])],
            "map": [("text", "abc"), ("list", [1, 2])],
        }
        values.extend(by_kind.get(kind, []))
        if kind in ("string",) and "maxLength" in core:
            values.append(("huge string", "a" * HUGE))
            values.append(("NUL byte", "a\x00b"))
            values.append(("one over maxLength", "a" * (int(core["maxLength"]) + 1)))
        if kind == "integer":
            if "minimum" in core:
                values.append(("below minimum", int(core["minimum"]) - 1))
            if "maximum" in core:
                values.append(("above maximum", int(core["maximum"]) + 1))
        if kind == "array":
            items = core.get("items", {})
            values.append(("list of garbage", [nested_garbage]))
            if self.kind(items) in ("object",):
                values.append(("list of half objects", [{"zzz_unknown": 1}]))
            if "maxItems" in core and int(core["maxItems"]) < 20000:
                values.append(
                    ("too many items", [self.sample(items)] * (int(core["maxItems"]) + 1))
                )
            if "minItems" in core and int(core["minItems"]) > 0:
                values.append(("too few items", []))
        if kind == "object":
            values.append(("nested garbage", nested_garbage))
            values.append(("unknown nested field", {**self.sample(core), "zzz_unknown": 1}))
            for name, prop in core["properties"].items():
                for label, wrong in self.wrong_values(prop)[:2]:
                    values.append((f"{name} {label}", {**self.sample(core), name: wrong}))
        if kind == "map":
            extra = core.get("additionalProperties")
            if isinstance(extra, dict) and self.kind(extra) == "string":
                values.append(("map of numbers", {"a": 1}))
                values.append(("map of a huge string", {"a": "a" * HUGE}))
                values.append(("map with a NUL byte", {"a": "\x00"}))
        return values

    def property_gaps(self, schema: dict[str, Any], where: str = "") -> Iterator[str]:
        """Fields with no upper bound: strings without maxLength, numbers without maximum."""
        core = self.core(schema)
        kind = self.kind(schema)
        if kind == "string" and "maxLength" not in core and "pattern" not in core:
            yield f"{where}: string without maxLength"
        if kind == "integer" and ("maximum" not in core or "minimum" not in core):
            yield f"{where}: integer without minimum and maximum"
        if kind == "array":
            if "maxItems" not in core:
                yield f"{where}: array without maxItems"
            yield from self.property_gaps(core.get("items", {}), f"{where}[]")
        if kind == "object":
            for name, prop in core["properties"].items():
                yield from self.property_gaps(prop, f"{where}.{name}")
        if kind == "map":
            extra = core.get("additionalProperties")
            if isinstance(extra, dict):
                yield from self.property_gaps(extra, f"{where}{{}}")


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


def body_cases(schemas: Schemas, schema: dict[str, Any], seed: dict[str, Any]) -> list[Case]:
    """Every malformed body for one operation; ``seed`` is a body the operation accepts."""
    core = schemas.core(schema)
    cases = [
        Case("not JSON", b"{not json"),
        Case("JSON array", b"[]"),
        Case("JSON number", b"42"),
        Case("JSON null", b"null"),
        Case("no body", None),
        Case("empty body", b""),
        Case("text/plain body", _json(seed), content_type="text/plain"),
        Case("invalid UTF-8", b'{"name": "\xff\xfe"}'),
        Case("deeply nested", b"[" * 50_000 + b"]" * 50_000),
        Case("5000-digit number", b'{"name": 1' + b"0" * 5000 + b"}"),
        Case("over the body limit", b'{"name": "' + b"a" * (2 * 1024 * 1024) + b'"}'),
        Case("unknown extra field", _json({**seed, "zzz_unknown": 1})),
    ]
    if core.get("required"):
        cases.append(Case("empty object", b"{}"))
    for name in core.get("required", []):
        cases.append(Case(f"missing {name}", _json({k: v for k, v in seed.items() if k != name})))
    for name, prop in core.get("properties", {}).items():
        for label, wrong in schemas.wrong_values(prop):
            cases.append(Case(f"{name}: {label}", _json({**seed, name: wrong})))
    return cases


BAD_IDS = (
    "does-not-exist",
    "x" * 3000,
    "%00",
    "a%00b",
    "%C3%28",
    "..%2F..%2Fetc%2Fpasswd",
    "%27%20OR%20%271%27=%271",
    "%F0%9F%92%A5",
)


def query_cases(op: Operation) -> list[Case]:
    """Bad values for every declared query parameter, and an undeclared one."""
    cases = [Case("unknown query parameter", query="zzz_unknown=1")]
    for param in op.query_params:
        name = param["name"]
        schema = param.get("schema", {})
        kinds = {schema.get("type")} | {v.get("type") for v in schema.get("anyOf", [])}
        fmt = schema.get("format") or next(
            (v.get("format") for v in schema.get("anyOf", []) if v.get("format")), None
        )
        if "integer" in kinds:
            for value in ("abc", "1.5", "", "99999999999999999999", "%00"):
                cases.append(Case(f"{name}={value}", query=f"{name}={value}"))
            if "minimum" in schema:
                below = int(schema["minimum"]) - 1
                cases.append(Case(f"{name} below minimum", query=f"{name}={below}"))
            if "maximum" in schema:
                above = int(schema["maximum"]) + 1
                cases.append(Case(f"{name} above maximum", query=f"{name}={above}"))
        elif "boolean" in kinds:
            for value in ("maybe", "2", "%00"):
                cases.append(Case(f"{name}={value}", query=f"{name}={value}"))
        elif fmt == "date-time":
            for value in ("not-a-date", "2024-13-45T99:99:99", "99999999999999999999", "%00"):
                cases.append(Case(f"{name}={value}", query=f"{name}={value}"))
        else:
            # Any text is a legal filter value; it must just never break the server.
            for value in ("x" * 3000, "%00"):
                cases.append(Case(f"{name}={value[:20]}", query=f"{name}={value}", must_fail=False))
    return cases
