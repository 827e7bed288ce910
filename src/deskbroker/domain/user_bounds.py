"""What a user row may hold in groups and attributes, and how a directory's answer fits.

Every user row is read whole by the admin listing (up to 1,000 rows a page), by the
login path and by the engine's vetting of webhook setters, so one row must stay small:
a tenant administrator once stored 500 attributes of 2,000 characters per user, and a
page of such users took a broker worker from 208 to 1,187 MiB. The bounds are:

- groups: at most ``MAX_GROUPS`` names of at most ``MAX_GROUP_CHARS`` characters;
- attributes: at most ``MAX_ATTRIBUTES`` keys of at most ``MAX_ATTRIBUTE_KEY_CHARS``
  characters, values of at most ``MAX_ATTRIBUTE_VALUE_CHARS`` characters, and at most
  ``MAX_ATTRIBUTES_BYTES`` in all as compact UTF-8 JSON (what the row stores).

Two ways in, two answers. An administrator's input (``UserGroups``, ``UserAttributes``
in the admin API's user bodies) beyond a bound is refused with a 422 in words, nothing
written. A directory's answer at sign-in is not the caller's input to refuse: the user
would be locked out for what their directory says. ``clip_identity`` keeps what fits and
says, never with the values, what it left out; the service logs that once per answer.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Annotated

from pydantic import AfterValidator, WithJsonSchema

from deskbroker.domain.rules import Identity

MAX_GROUPS = 256
MAX_GROUP_CHARS = 256
MAX_ATTRIBUTES = 64
MAX_ATTRIBUTE_KEY_CHARS = 100
MAX_ATTRIBUTE_VALUE_CHARS = 1000
MAX_ATTRIBUTES_BYTES = 16 * 1024

GROUPS_WORDS = (
    f"at most {MAX_GROUPS} groups, each of at most {MAX_GROUP_CHARS} characters; "
    "an assignment rule's group condition reads them"
)
ATTRIBUTES_WORDS = (
    f"at most {MAX_ATTRIBUTES} attributes; keys of at most {MAX_ATTRIBUTE_KEY_CHARS} "
    f"characters, values of at most {MAX_ATTRIBUTE_VALUE_CHARS}, and at most "
    f"{MAX_ATTRIBUTES_BYTES // 1024} KiB in all (as JSON)"
)


def _shown(key: str) -> str:
    # An over-long key is echoed by its beginning only, so the answer stays a sentence.
    return repr(key if len(key) <= 40 else key[:40] + "…")


def _encoded(text: str) -> int:
    """Bytes of ``text`` as a JSON string (quotes and escapes included), UTF-8."""
    return len(json.dumps(text, ensure_ascii=False).encode())


def attributes_size(attributes: Mapping[str, str]) -> int:
    """Bytes of ``attributes`` as compact UTF-8 JSON, the measure of ``MAX_ATTRIBUTES_BYTES``."""
    return len(json.dumps(dict(attributes), ensure_ascii=False, separators=(",", ":")).encode())


def check_groups(groups: list[str]) -> list[str]:
    """``groups`` unchanged, or ``ValueError`` naming the bound it crosses."""
    if len(groups) > MAX_GROUPS:
        raise ValueError(f"at most {MAX_GROUPS} groups, not {len(groups)}")
    for n, group in enumerate(groups, start=1):
        if len(group) > MAX_GROUP_CHARS:
            raise ValueError(
                f"group {n} is {len(group)} characters long; a group name has at most "
                f"{MAX_GROUP_CHARS} characters"
            )
    return groups


def check_attributes(attributes: dict[str, str]) -> dict[str, str]:
    """``attributes`` unchanged, or ``ValueError`` naming the bound it crosses."""
    if len(attributes) > MAX_ATTRIBUTES:
        raise ValueError(f"at most {MAX_ATTRIBUTES} attributes, not {len(attributes)}")
    for key, value in attributes.items():
        if len(key) > MAX_ATTRIBUTE_KEY_CHARS:
            raise ValueError(
                f"the key {_shown(key)} is {len(key)} characters long; an attribute's key "
                f"has at most {MAX_ATTRIBUTE_KEY_CHARS} characters"
            )
        if len(value) > MAX_ATTRIBUTE_VALUE_CHARS:
            raise ValueError(
                f"the value of {_shown(key)} is {len(value)} characters long; an "
                f"attribute's value has at most {MAX_ATTRIBUTE_VALUE_CHARS} characters"
            )
    size = attributes_size(attributes)
    if size > MAX_ATTRIBUTES_BYTES:
        raise ValueError(
            f"the attributes are {size} bytes as JSON; at most {MAX_ATTRIBUTES_BYTES} "
            f"({MAX_ATTRIBUTES_BYTES // 1024} KiB) in all"
        )
    return attributes


# An administrator's input: refused beyond a bound (a 422 naming the field and bound).
# The validators give the words; the declared schema gives clients the same bounds (the
# OpenAPI document leaves no request field unbounded).
UserGroups = Annotated[
    list[str],
    AfterValidator(check_groups),
    WithJsonSchema(
        {
            "type": "array",
            "maxItems": MAX_GROUPS,
            "items": {"type": "string", "maxLength": MAX_GROUP_CHARS},
        }
    ),
]
UserAttributes = Annotated[
    dict[str, str],
    AfterValidator(check_attributes),
    WithJsonSchema(
        {
            "type": "object",
            "maxProperties": MAX_ATTRIBUTES,
            "propertyNames": {"maxLength": MAX_ATTRIBUTE_KEY_CHARS},
            "additionalProperties": {"type": "string", "maxLength": MAX_ATTRIBUTE_VALUE_CHARS},
        }
    ),
]


@dataclass(frozen=True)
class Clipped:
    """A directory's answer within the bounds, and what was left out, in words."""

    identity: Identity
    # Counts and bounds only: never a group's name or an attribute's value, which may
    # be personal data the log must not hold.
    cuts: tuple[str, ...]


def _clip_groups(groups: Iterable[str], cuts: list[str]) -> frozenset[str]:
    names = sorted(groups)
    # Dropped, not shortened: a shortened name could be another group's, and a rule
    # over that group would then match a user who is not in it.
    fitting = [g for g in names if len(g) <= MAX_GROUP_CHARS]
    if len(fitting) < len(names):
        cuts.append(
            f"{len(names) - len(fitting)} group name(s) longer than {MAX_GROUP_CHARS} "
            "characters dropped"
        )
    if len(fitting) > MAX_GROUPS:
        # The first in sorted order: the same groups at every sign-in, whatever order
        # the directory lists them in.
        cuts.append(f"{len(fitting)} groups, the first {MAX_GROUPS} kept")
    return frozenset(fitting[:MAX_GROUPS])


def _clip_attributes(attributes: Mapping[str, str], cuts: list[str]) -> dict[str, str]:
    kept: dict[str, str] = {}
    long_keys = shortened = over_count = over_size = 0
    size = 2  # the braces of the JSON object
    for key, raw in attributes.items():
        if len(key) > MAX_ATTRIBUTE_KEY_CHARS:
            # Dropped like a long group name: a shortened key could be another one.
            long_keys += 1
            continue
        if len(kept) == MAX_ATTRIBUTES:
            over_count += 1
            continue
        value = str(raw)
        if len(value) > MAX_ATTRIBUTE_VALUE_CHARS:
            value = value[:MAX_ATTRIBUTE_VALUE_CHARS]
            shortened += 1
        entry = _encoded(key) + 1 + _encoded(value) + (1 if kept else 0)
        if size + entry > MAX_ATTRIBUTES_BYTES:
            over_size += 1
            continue
        kept[key] = value
        size += entry
    if long_keys:
        cuts.append(
            f"{long_keys} attribute(s) with a key longer than {MAX_ATTRIBUTE_KEY_CHARS} "
            "characters dropped"
        )
    if over_count:
        cuts.append(f"{over_count} attribute(s) beyond the first {MAX_ATTRIBUTES} dropped")
    if shortened:
        cuts.append(f"{shortened} attribute value(s) cut to {MAX_ATTRIBUTE_VALUE_CHARS} characters")
    if over_size:
        cuts.append(
            f"{over_size} attribute(s) dropped to keep {MAX_ATTRIBUTES_BYTES // 1024} KiB in all"
        )
    return kept


def clip_identity(who: Identity) -> Clipped:
    """``who`` as a user row may hold it: the first ``MAX_GROUPS`` groups (sorted), the
    first ``MAX_ATTRIBUTES`` attributes (in the directory's order) with values cut to
    ``MAX_ATTRIBUTE_VALUE_CHARS`` characters, within ``MAX_ATTRIBUTES_BYTES`` in all;
    over-long group names and attribute keys are dropped. ``who`` itself when it fits."""
    cuts: list[str] = []
    groups = _clip_groups(who.groups, cuts)
    attributes = _clip_attributes(who.attributes, cuts)
    if not cuts:
        return Clipped(who, ())
    return Clipped(replace(who, groups=groups, attributes=attributes), tuple(cuts))
