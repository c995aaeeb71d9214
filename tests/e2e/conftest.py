"""A failed lab test keeps its lab's logs (tests/e2e/labkit.py: kept_on_failure)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e import labkit


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[Any]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if report.failed and labkit.WATCHED:
        basetemp = item.config._tmp_path_factory.getbasetemp()  # type: ignore[attr-defined]
        for title, text in labkit.keep_failed(basetemp, item.nodeid):
            report.sections.append((title, text))
