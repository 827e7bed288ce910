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


def render(template: str, values: Mapping[str, str | int]) -> str:
    """Fill the tags; a width pads numbers with zeros."""

    def fill(match: re.Match[str]) -> str:
        name, width = match.group(1), match.group(2)
        value = values.get(name, "")
        text = str(value)
        if width and isinstance(value, int):
            text = text.zfill(int(width))
        return re.sub(r"[^A-Za-z0-9-]", "-", text)

    return _TAG.sub(fill, template)
