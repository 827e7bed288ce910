"""Session-wide directories: one slapd, one Samba AD DC and one ypserv, started once and
stopped."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.identity.directories import (
    SambaDc,
    Slapd,
    ad_address,
    load_ad,
    provision_samba,
    running_slapd,
    start_samba,
    stop,
)
from tests.identity.nis_server import NisSite, running_nis
from tests.identity.nis_users import nis_groups, nis_users


@pytest.fixture(scope="session")
def slapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slapd]:
    with running_slapd(tmp_path_factory.mktemp("slapd")) as server:
        yield server


@pytest.fixture(scope="session")
def samba_dc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SambaDc]:
    directory = tmp_path_factory.mktemp("samba")
    # A loopback address of its own: AD's ports are fixed, and other test processes (xdist
    # workers, the other database leg, other runs) may be running a DC of their own.
    with ad_address() as host:
        provision_samba(directory, host)  # ~6 s
        dc = start_samba(directory, host)
        try:
            load_ad(dc)
            yield dc
        finally:
            stop(dc.proc)


@pytest.fixture(scope="session")
def nis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NisSite]:
    with running_nis(tmp_path_factory.mktemp("nis"), nis_users(), nis_groups()) as site:
        yield site
