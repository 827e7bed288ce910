"""Dynamic tags in name templates: ``vdi-{POOL}-{SEQUENCE:3}`` → ``vdi-sales-007``."""

from __future__ import annotations

import re
from collections.abc import Mapping

from deskbroker.errors import InvalidInput

_TAG = re.compile(r"\{([A-Z_]+)(?::(\d{1,2}))?\}")
KNOWN_TAGS = frozenset({"SEQUENCE", "POOL", "USER", "CENTER", "TENANT", "RANDOM"})


def validate_template(template: str) -> None:
    """Reject unknown tags at the edge rather than producing odd names later."""
    for match in _TAG.finditer(template):
        if match.group(1) not in KNOWN_TAGS:
            raise InvalidInput(
                f"unknown tag {{{match.group(1)}}} in name template; "
                f"known tags: {', '.join(sorted(KNOWN_TAGS))}"
            )
    leftover = _TAG.sub("", template)
    if "{" in leftover or "}" in leftover:
        raise InvalidInput("name template has an unbalanced brace")


# What a pool's desktops are called when its template renders nothing.
DEFAULT_TEMPLATE = "{POOL}-{SEQUENCE:3}"


def render(template: str, values: Mapping[str, str | int]) -> str:
    """Fill the tags; a width pads numbers with zeros. Never returns an empty name.

    A tag without a value (``{USER}`` for a desktop built before anyone asked for it)
    renders as nothing, and the dash it leaves doubled or dangling goes too. When no
    letter or digit is left, the name follows ``DEFAULT_TEMPLATE`` instead: a cloud
    must never be asked for a server without a name."""
    empty = False

    def fill(match: re.Match[str]) -> str:
        nonlocal empty
        name, width = match.group(1), match.group(2)
        value = values.get(name, "")
        text = str(value)
        if width and isinstance(value, int):
            text = text.zfill(int(width))
        empty = empty or text == ""
        return re.sub(r"[^A-Za-z0-9-]", "-", text)

    name = _TAG.sub(fill, template)
    if empty:
        name = re.sub(r"-{2,}", "-", name).strip("-")
    if re.search(r"[A-Za-z0-9]", name):
        return name
    if template == DEFAULT_TEMPLATE:
        raise InvalidInput("the name template renders an empty name: the pool has no name")
    return render(DEFAULT_TEMPLATE, values)
