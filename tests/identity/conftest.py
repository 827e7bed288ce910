"""Session-wide directories: one slapd and one Samba AD DC, started once and stopped."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.identity.directories import (
    SambaDc,
    Slapd,
    ad_lock,
    load_ad,
    provision_samba,
    running_slapd,
    start_samba,
    stop,
)


@pytest.fixture(scope="session")
def slapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slapd]:
    with running_slapd(tmp_path_factory.mktemp("slapd")) as server:
        yield server


@pytest.fixture(scope="session")
def samba_dc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SambaDc]:
    directory = tmp_path_factory.mktemp("samba")
    provision_samba(directory)  # ~6 s, no ports: before taking the lock
    with ad_lock():
        dc = start_samba(directory)
        try:
            load_ad(dc)
            yield dc
        finally:
            stop(dc.proc)
