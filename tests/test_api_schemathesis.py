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
from jsonschema import Draft202012Validator
from schemathesis.checks import negative_data_rejection
from schemathesis.core import NotSet

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
        authority, ADMIN, "admin", authority.clock.now(), rate_per_minute=tokens.MAX_RATE_PER_MINUTE
    )
    try:
        # Schemathesis sends many unauthenticated negative cases: lift the per-address limit.
        with running_server(authority, work / "server", api_anonymous_rate=100_000) as server:
            session = requests.Session()
            session.verify = str(server.root_pem)
            # Loopback only: no proxy or .netrc from the environment (requests would otherwise read
            # both on each of the thousands of generated requests).
            session.trust_env = False
            document = session.get(f"{server.url}/api/v1/openapi.json", verify=session.verify).json()
            yield {"url": server.url, "token": token, "session": session, "document": document}
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
    # A body over the server's limit (64 KiB) is answered 413 (documented) whether or not it is
    # schema-valid: generated PEM strings and property objects can be that large.
    checks = schema.config.checks
    checks.positive_data_acceptance = type(checks.positive_data_acceptance)(
        expected_statuses=["2xx", "401", "403", "404", "409", "413", "428", "429"]
    )
    checks.negative_data_rejection = type(checks.negative_data_rejection)(
        expected_statuses=["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429"]
    )
    return schema


schema = schemathesis.pytest.from_fixture("api_schema")


def _really_invalid(case: Any, document: dict[str, Any]) -> bool:
    """Whether a request schemathesis generated as invalid still is, as sent. Its negative mode
    sometimes only adds undeclared headers (which HTTP servers rightly ignore) or parameters with
    null or empty-list values (which requests never sends), and then counts the 2xx answer as
    accepting bad data (schemathesis issue #4762). Re-check what was sent against the published document."""
    operation = document["paths"][case.operation.path].get(case.method.lower())
    if operation is None:  # an undocumented method, sent to check that it is refused
        return True
    declared = {"path": {}, "query": {}}
    for param in operation.get("parameters", []):
        declared.setdefault(param["in"], {})[param["name"]] = param["schema"]

    def valid(location: str, values: dict[str, Any] | None) -> bool:
        sent = {k: v for k, v in (values or {}).items() if v is not None and v != []}  # requests drops them
        closed = {"type": "object", "properties": declared[location], "additionalProperties": False}
        return Draft202012Validator(closed).is_valid(sent)

    body_ok = True
    if "requestBody" in operation and not isinstance(case.body, NotSet):
        body_schema = operation["requestBody"]["content"]["application/json"]["schema"]
        body_ok = Draft202012Validator(body_schema).is_valid(case.body)
    return not (valid("path", case.path_parameters) and valid("query", case.query) and body_ok)


@schema.parametrize()
def test_every_documented_operation(case: Any, live: dict[str, Any]) -> None:
    auth = {"Authorization": f"Bearer {live['token']}"}
    transport = {"session": live["session"], "verify": live["session"].verify}
    response = case.call(headers=auth, **transport)
    excluded = []
    if case.meta.generation.mode.is_negative and not _really_invalid(case, live["document"]):
        excluded.append(negative_data_rejection)
    case.validate_response(response, excluded_checks=excluded, headers=auth, transport_kwargs=transport)
