"""Schemathesis against the live admin API: the document is fetched from the running server over
TLS, and every documented operation is called with generated requests (valid and invalid) under a
real admin token. Each answer must carry a documented status, conform to its response schema and
headers, never be a 5xx, and invalid input must be refused."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from est_helpers import provision, running_server
from schemathesis.config import PositiveDataAcceptanceConfig

from devid.api import tokens
from devid.authority.setup import init_home, open_authority

PASSPHRASE = b"correct horse battery staple"
#: A name generated tokens cannot take (the schema's pattern allows it, but a random hit is remote).
ADMIN = "schemathesis-admin-7f3c"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    work = tmp_path_factory.mktemp("schemathesis")
    home = init_home(work / "home", org="Schemathesis Org", passphrase=PASSPHRASE)
    authority = open_authority(home, PASSPHRASE)
    for i in range(3):
        provision(authority, f"SN-S{i}", work / "devices")
    token, _ = tokens.create(
        authority.engine, ADMIN, "admin", authority.clock.now(), rate_per_minute=tokens.MAX_RATE_PER_MINUTE
    )
    try:
        with running_server(authority, work / "server") as server:
            session = requests.Session()
            session.verify = str(server.root_pem)
            yield {"url": server.url, "token": token, "session": session}
    finally:
        authority.engine.dispose()


@pytest.fixture(scope="module")
def api_schema(live: dict[str, Any]) -> Any:
    schema = schemathesis.openapi.from_url(
        f"{live['url']}/api/v1/openapi.json", verify=live["session"].verify
    )
    schema.config.update(base_url=live["url"])
    # A versioned change without If-Match or a body `version` is answered 428 (documented): the
    # "one of a header or a field" rule is beyond what OpenAPI can state, so a generated request
    # may be schema-valid and still lack both. 428 is therefore an expected answer to valid data.
    schema.config.checks.positive_data_acceptance = PositiveDataAcceptanceConfig(
        expected_statuses=["2xx", "401", "403", "404", "409", "428", "429"]
    )
    return schema


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
def test_every_documented_operation(case: Any, live: dict[str, Any]) -> None:
    case.call_and_validate(
        session=live["session"],
        headers={"Authorization": f"Bearer {live['token']}"},
        verify=live["session"].verify,
    )
