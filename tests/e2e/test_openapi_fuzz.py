"""Schemathesis against docs/openapi.yaml and the real server: bounded, in the suite."""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.conftest import ROOT
from tests.e2e.servers import GatewayProcess

schema = schemathesis.openapi.from_path(str(ROOT / "docs" / "openapi.yaml"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    gw = GatewayProcess(Path(tmp_path_factory.mktemp("fuzz")), {}).start()
    yield gw
    assert gw.stop() == 0, gw.log.read_text()


@schema.parametrize()
@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                 HealthCheck.function_scoped_fixture])
def test_the_server_honours_its_openapi_description(case, server) -> None:
    # Every check but positive_data_acceptance: a body can match the OpenAPI shape and still
    # fail the XSD, or name a usn the gateway does not know; those are rightly 4xx.
    case.call_and_validate(base_url=server.url, timeout=30,
                           excluded_checks=[positive_data_acceptance])
