"""keepalived itself (`keepalived -t`) accepts every configuration render writes."""

from __future__ import annotations

import pwd
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import require_programs, require_root
from tests.support.netns import (
    Cluster,
    Namespace,
    keepalived_config_test,
    run,
    unique_name,
)

ROOT = Path(__file__).resolve().parents[2]

VARIANTS: dict[str, dict[str, Any]] = {
    "script": {},
    "track_file": {"check": {"mode": "track_file"}},
    "script as nobody": {"script_user": "nobody"},
    "unicast": {"unicast": True},
    "nopreempt": {"preempt": False},
    "VRRPv2 with authentication": {"vrrp_version": 2, "auth_pass": "s3cret"},
    "negative weight, docker check, fast adverts": {
        "advert_int": 0.1, "check": {"weight": -30, "docker_service": ["gw_gateway"],
                                     "tcp": ["127.0.0.1:8443"]}},
}


@pytest.fixture(scope="module")
def nodes() -> Iterator[Cluster]:
    """The namespaces only: keepalived -t checks that the interfaces exist."""
    require_root()
    require_programs("ip", "keepalived")
    with Cluster(size=3) as made:
        yield made


@pytest.mark.parametrize("variant", VARIANTS, ids=list(VARIANTS))
def test_keepalived_accepts_what_render_writes(nodes: Cluster, variant: str) -> None:
    overrides = {**VARIANTS[variant]}
    check = overrides.pop("check", {})
    mode = check.pop("mode", "script")
    paths = nodes.render(nodes.description(mode, check=check, **overrides))
    for node in nodes.nodes:
        assert keepalived_config_test(node.ns, paths[node.name]) is None


def test_the_acceptance_check_can_fail(nodes: Cluster) -> None:
    paths = nodes.render(nodes.description("script"))
    broken = paths["node1"].with_name("broken.conf")
    broken.write_text(paths["node1"].read_text().replace("virtual_router_id 51",
                                                         "virtual_router_id 300"))
    said = keepalived_config_test(nodes.nodes[0].ns, broken)
    assert said is not None
    assert "300" in said


@pytest.fixture
def host_with_eth1() -> Iterator[Namespace]:
    """A namespace with the example's interface name."""
    require_root()
    require_programs("ip", "keepalived")
    ns = Namespace(unique_name("example"))
    try:
        ns.create()
        run(["ip", "-n", ns.name, "link", "add", "eth1", "type", "veth", "peer", "name", "eth1p"])
        yield ns
    finally:
        ns.delete()


def test_keepalived_accepts_the_committed_example(host_with_eth1: Namespace,
                                                  tmp_path: Path) -> None:
    """The example names the keepalived_script user, which a host creates when it installs the
    check (docs/keepalived.md). Where that user does not exist, the test swaps in one that does:
    whether a user exists is a fact about the host, not about the configuration."""
    try:
        pwd.getpwnam("keepalived_script")
        user = "keepalived_script"
    except KeyError:
        user = "nobody"
    for path in sorted((ROOT / "keepalived" / "example").glob("*.conf")):
        copy = tmp_path / path.name
        copy.write_text(path.read_text().replace("script_user keepalived_script",
                                                 f"script_user {user}"))
        assert keepalived_config_test(host_with_eth1, copy) is None, path
