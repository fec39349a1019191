"""Fixtures of the gateway's unit tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.logwriter import NginxWriter


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[NginxWriter]:
    fake = NginxWriter(tmp_path / "gateway-metrics.log")
    yield fake
    if fake.worker is not None:
        fake.let_go()
