"""Schemathesis against the live app on loopback: no 5xx, responses match the spec.

Runs every operation of ``/openapi.json`` with generated (valid and invalid)
requests, bounded by ``max_examples``.  The operations are driven directly
with hypothesis because schemathesis' pytest plugin does not load under the
pytest version used here.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import positive_data_acceptance
from schemathesis.generation import GenerationMode

from resistance.registry.app import create_app
from tests.registry.conftest import ThreadedServer, make_settings


@pytest.fixture
def live_server(tmp_path: Path, db_url: str) -> Iterator[tuple[str, str]]:
    app = create_app(make_settings(tmp_path / "reg", db_url))
    with ThreadedServer(app) as server:
        base = f"http://127.0.0.1:{server.port}"
        signup = httpx.post(f"{base}/api/v1/operators", json={"name": "fuzz"}, timeout=10)
        yield base, signup.json()["token"]


def test_api_conforms(live_server: tuple[str, str]) -> None:
    base, token = live_server
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 9
    headers = {"Authorization": f"Bearer {token}"}
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
            def run(case: schemathesis.Case) -> None:
                response = case.call(headers=headers)
                assert response.status_code < 500, (case.path, response.text)
                # Schema-valid data may still be refused on meaning (a bad signature or
                # address checksum is no JSON Schema matter): that is a 4xx, not a bug.
                case.validate_response(response, excluded_checks=[positive_data_acceptance])

            try:
                run()
            except Unsatisfiable:
                # nothing to make invalid (no parameters, no body)
                assert mode is GenerationMode.NEGATIVE
