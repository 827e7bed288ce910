"""The outbound policy a Settings enforces is the one its own values say, copies included."""

from __future__ import annotations

from pathlib import Path

from deskbroker.config import Settings


def test_a_copy_with_another_allow_list_enforces_its_own_policy(tmp_path: Path) -> None:
    strict = Settings(data_dir=tmp_path, outbound_allow="")
    assert strict.outbound_policy.refusal("127.0.0.1") is not None  # asked once: computed
    opened = strict.model_copy(update={"outbound_allow": "127.0.0.0/8"})
    assert opened.outbound_policy.refusal("127.0.0.1") is None
    # And the other way: the original is not changed by its copy.
    assert strict.outbound_policy.refusal("127.0.0.1") is not None
    closed = opened.model_copy(update={"outbound_allow": ""})
    assert closed.outbound_policy.refusal("127.0.0.1") is not None
