"""Fixtures every integration test gets."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.test_connect_directory import _clients


@pytest.fixture(autouse=True)
def _stop_clients() -> Iterator[None]:
    """Every client :func:`start_client` started is stopped by PID when its test ends."""
    yield
    while _clients:
        _clients.pop().stop()
