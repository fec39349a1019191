"""nginx's environment: with --nginx-return-memory glibc maps nginx's configuration blocks alone,
so that a reload gives the old configuration's memory back (tests/integration/test_scale.py
measures it)."""

from __future__ import annotations

from agent.gateway.drivers.nginx import MMAP_THRESHOLD, nginx_environment


def test_nginx_gets_the_mmap_threshold_of_its_pool_blocks_when_asked() -> None:
    env = nginx_environment(True, {"PATH": "/usr/bin", "TZ": "UTC"})
    assert env == {"PATH": "/usr/bin", "TZ": "UTC", "MALLOC_MMAP_THRESHOLD_": "16384"}
    assert MMAP_THRESHOLD == 16 * 1024  # nginx's pool block (NGX_DEFAULT_POOL_SIZE)


def test_by_default_nginx_keeps_glibcs_own_threshold() -> None:
    assert nginx_environment(False, {"PATH": "/usr/bin"}) == {"PATH": "/usr/bin"}


def test_an_operators_own_threshold_is_kept() -> None:
    env = nginx_environment(True, {"MALLOC_MMAP_THRESHOLD_": "65536"})
    assert env["MALLOC_MMAP_THRESHOLD_"] == "65536"
