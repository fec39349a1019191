"""Shared fixtures live in tests/support and in each tier's own conftest.py.

Each tier's tests carry the tier's marker (`-m integration`, `-m "not swarm"`), whatever their
module says: a `pytestmark` in a conftest.py marks nothing, so the folder decides here. The
figures the tiers measured (tests.support.Measurements) are printed at the end of the run.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import Measurements

TIERS = ("integration", "keepalived", "swarm", "cluster", "soak")
HERE = Path(__file__).resolve().parent


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-golden", action="store_true", default=False,
                     help="write the renderer's golden files (tests/unit/gateway/golden) anew")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        try:
            tier = Path(item.path).resolve().relative_to(HERE).parts[0]
        except ValueError:
            continue
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for measured in Measurements.every:
        if measured.lines:
            terminalreporter.section(measured.title)
            for line in measured.lines:
                terminalreporter.write_line(line)
