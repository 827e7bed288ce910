"""The stronger-account rule as the generic admin routes (``crud``) call it.

The rule itself, and the reads it makes, are ``services/standing.py``; this name stays
for the routes that check what reaches an assignment rule's users before a change.
"""

from __future__ import annotations

from deskbroker.services.standing import check_reach, check_rule, check_source, rule_columns

__all__ = ["check_reach", "check_rule", "check_source", "rule_columns"]
