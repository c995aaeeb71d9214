"""Schemathesis against the live app on loopback: no 5xx, responses match the spec.

Runs every operation of ``/openapi.json`` with generated (valid and invalid)
requests, signed out and with each role's token (admin, operator, probe), on
SQLite and PostgreSQL (the ``db_url`` fixture), bounded by ``max_examples``
so the whole run takes a few minutes.  The app is served as `serve` serves it
(:func:`resistance.registry.server.server_config`).  The operations are
driven directly with hypothesis because schemathesis' pytest plugin does not
load under the pytest version used here.
"""

from __future__ import annotations

import errno
import ipaddress
import itertools
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import positive_data_acceptance
from schemathesis.generation import GenerationMode

from resistance.directory.keys import public_key_text
from resistance.registry.app import create_app
from tests.registry.conftest import ThreadedServer, make_settings, no_dns

#: Examples per operation, role and mode: 4 roles x 2 modes x ~30 operations x this.
EXAMPLES = 5


def loopback_address(address: object) -> bool:
    """Whether a socket address is one this test may reach (loopback or a Unix path)."""
    if isinstance(address, (str, bytes)):
        return True  # AF_UNIX
    if not isinstance(address, tuple) or not address:
        return False
    try:
        return ipaddress.ip_address(str(address[0]).split("%")[0]).is_loopback
    except ValueError:
        return False  # a name: resolved elsewhere, never dialed from here


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Generated requests may register any public address as an endpoint, and the
    registry dials what is registered (proof-of-control challenges, WireGuard and
    MTProto handshakes).  The server runs in this process, so every TCP connect and
    UDP send here to anything but loopback fails at once instead of leaving."""
    real = socket.socket

    def refuse(address: object) -> None:
        if not loopback_address(address):
            raise OSError(errno.ENETUNREACH, f"test refuses to dial {address!r}")

    def connect(self: socket.socket, address: Any) -> None:
        refuse(address)
        real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        refuse(address)
        return real_connect_ex(self, address)

    def sendto(self: socket.socket, data: Any, *rest: Any) -> int:
        refuse(rest[-1])
        return real_sendto(self, data, *rest)

    real_connect, real_connect_ex, real_sendto = real.connect, real.connect_ex, real.sendto
    monkeypatch.setattr(real, "connect", connect)
    monkeypatch.setattr(real, "connect_ex", connect_ex)
    monkeypatch.setattr(real, "sendto", sendto)


def test_only_loopback_passes_the_guard() -> None:
    assert loopback_address(("127.0.0.1", 80)) and loopback_address(("::1", 80, 0, 0))
    assert loopback_address("/run/postgresql/.s.PGSQL.5432")
    for other in (("198.51.100.7", 80), ("10.0.0.1", 1), ("::ffff:8.8.8.8", 53), ("host", 1)):
        assert not loopback_address(other)


@pytest.fixture
def live_server(tmp_path: Path, db_url: str) -> Iterator[tuple[str, dict[str, str]]]:
    settings_ = make_settings(tmp_path / "reg", db_url)
    admin: list[str] = []
    app = create_app(settings_, on_admin_token=admin.append, resolver=no_dns)
    with ThreadedServer(app, settings_) as server:
        base = f"http://127.0.0.1:{server.port}"
        signup = httpx.post(f"{base}/api/v1/operators", json={"name": "fuzz"}, timeout=10)
        key = public_key_text(Ed25519PrivateKey.generate().public_key())
        probe = httpx.post(
            f"{base}/api/v1/probes",
            json={"name": "fuzz-probe", "country": "RU", "public_key": key},
            headers={"Authorization": f"Bearer {admin[0]}"},
            timeout=10,
        )
        assert signup.status_code == 201 and probe.status_code == 201, probe.text
        yield (
            base,
            {
                "signed out": "",
                "admin": admin[0],
                "operator": signup.json()["token"],
                "probe": probe.json()["token"],
            },
        )


def test_api_conforms(live_server: tuple[str, dict[str, str]]) -> None:
    base, tokens = live_server
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 9
    for (role, token), operation in itertools.product(tokens.items(), operations):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                _examples(operation, mode, role, headers)()
            except Unsatisfiable:
                # nothing to make invalid (no parameters, no body)
                assert mode is GenerationMode.NEGATIVE


def _examples(
    operation: Any, mode: GenerationMode, role: str, headers: dict[str, str]
) -> Callable[[], None]:
    """The hypothesis test of one operation in one mode as one role."""

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
    def run(case: schemathesis.Case) -> None:
        response = case.call(headers=headers)
        assert response.status_code < 500, (role, case.method, case.path, response.text)
        # Schema-valid data may still be refused on meaning (a bad signature or
        # address checksum is no JSON Schema matter): that is a 4xx, not a bug.
        case.validate_response(response, excluded_checks=[positive_data_acceptance])

    return run
