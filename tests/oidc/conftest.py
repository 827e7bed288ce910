"""One OpenID provider for the session, started and stopped by the tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.oidc.provider import OidcProvider, running_provider


@pytest.fixture(scope="session")
def oidc_provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcProvider]:
    with running_provider(tmp_path_factory.mktemp("oidc")) as provider:
        yield provider
