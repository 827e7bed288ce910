"""The explain answer as rich tables, for ``deskbroker explain``."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from deskbroker.services.explain import Explanation, rule_label


def print_explanation(console: Console, result: Explanation) -> None:
    """Source choice, identity, rules in order (the deciding one marked), and offers."""
    console.print(f"[bold]{result.summary}[/]", highlight=False)

    sources = Table(title="Identity sources", title_justify="left")
    for column in ("source", "kind", "why", "outcome"):
        sources.add_column(column)
    for step in result.tried:
        sources.add_row(step.source.name, step.source.kind, step.why, step.detail)
    console.print(sources)

    who = result.identity
    identity = Table(title="Identity", title_justify="left", show_header=False)
    identity.add_column("field", style="bold")
    identity.add_column("value")
    identity.add_row("username", who.username)
    identity.add_row("groups", ", ".join(sorted(who.groups)) or "-")
    identity.add_row("OU", who.ou or "-")
    for name, value in sorted(who.attributes.items()):
        identity.add_row(f"attribute {name}", value)
    identity.add_row("broker user", result.user.id if result.user else "none yet")
    console.print(identity)

    rules = Table(title="Assignment rules, in order", title_justify="left")
    for column in ("#", "rule", "matched", "reason", "policy", "role"):
        rules.add_column(column)
    for n, verdict in enumerate(result.verdicts, 1):
        deciding = verdict.rule is result.deciding
        mark = (
            "[green]yes, decides[/]" if deciding else ("yes" if verdict.matched else "[red]no[/]")
        )
        policy = result.policy_names.get(verdict.rule.policy_id or "", "-")
        rules.add_row(
            str(n), rule_label(verdict.rule), mark, verdict.reason, policy, verdict.rule.role
        )
    console.print(rules)

    if result.refused:
        console.print(f"[red]{result.refused}[/]", highlight=False)
        return
    offers = Table(title="What the policy would offer now", title_justify="left")
    for column in ("pool", "free", "backup pool", "outcome"):
        offers.add_column(column)
    for offer in result.offers:
        backup = (
            f"{offer.backup_pool_name} ({offer.backup_free} free)" if offer.backup_pool_id else "-"
        )
        offers.add_row(offer.pool_name, str(offer.free), backup, offer.outcome)
    console.print(offers)
