"""The nginx the gateway accepts (drivers/nginxversion.py): a real program that prints a version,
below, at and above the minimum."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.gateway.drivers.nginxversion import MINIMUM_VERSION, NginxTooOld, nginx_version


def fake_nginx(tmp_path: Path, said: str) -> str:
    binary = tmp_path / "nginx"
    binary.write_text(f"#!/bin/sh\necho '{said}' >&2\n")
    binary.chmod(0o755)
    return str(binary)


def test_the_minimum_is_what_h2c_and_sticky_on_resolve_need() -> None:
    assert MINIMUM_VERSION == (1, 29, 6)


@pytest.mark.parametrize("version", ["1.29.6", "1.30.6", "1.31.0"])
def test_a_recent_nginx_is_taken(tmp_path: Path, version: str) -> None:
    found = nginx_version(fake_nginx(tmp_path, f"nginx version: nginx/{version}"))
    assert ".".join(map(str, found)) == version


@pytest.mark.parametrize("version", ["1.29.5", "1.28.0", "1.27.4"])
def test_an_older_nginx_is_refused_naming_both_versions(tmp_path: Path, version: str) -> None:
    binary = fake_nginx(tmp_path, f"nginx version: nginx/{version}")
    with pytest.raises(NginxTooOld) as err:
        nginx_version(binary)
    assert f"is nginx {version}; the gateway needs nginx 1.29.6 or newer" in str(err.value)
    assert "sticky on resolved upstreams" in str(err.value)
