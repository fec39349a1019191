"""One cluster file -> each node's keepalived.conf, read back with the same parser lint uses."""

from __future__ import annotations

import argparse
import copy
import os
import pwd
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.keepalived.cli import register
from agent.keepalived.config import Config, read_config
from agent.keepalived.lint import lint_files
from agent.keepalived.render import ClusterError, cluster_from_dict, load_cluster, render_node
from tests.support import missing

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "keepalived" / "cluster.example.yaml"


def example(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    check = changes.pop("check", {})
    data.update(changes)
    data["check"] = {**data["check"], **check}
    return data


def render_all(data: dict[str, Any], folder: Path) -> dict[str, Config]:
    cluster = cluster_from_dict(data)
    configs = {}
    for node in cluster.nodes:
        path = folder / f"{node.name}.conf"
        path.write_text(render_node(cluster, node.name))
        configs[node.name] = read_config(path)
    return configs


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["keepalived", *argv])
    return int(args.func(args))


def test_every_node_is_one_virtual_router(tmp_path: Path) -> None:
    configs = render_all(example(), tmp_path)
    instances = [c.instances[0] for c in configs.values()]
    assert {i.name for i in instances} == {"gateway"}
    assert {i.virtual_router_id for i in instances} == {51}, "the SAME id on every node"
    assert [i.priority for i in instances] == [250, 240, 230]
    assert {i.state for i in instances} == {"BACKUP"}, "the election decides, highest wins"
    assert {tuple(i.vips) for i in instances} == {("192.0.2.100",)}
    for config in configs.values():
        assert config.global_flag("enable_script_security") is not None
        assert config.global_flag("script_user").args == ["keepalived_script"]  # type: ignore[union-attr]


def test_track_file_mode(tmp_path: Path) -> None:
    config = render_all(example(), tmp_path)["node1"]
    track = config.track_files["gateway_check"]
    assert (track.file, track.weight) == ("/run/gateway-check/state", 0)
    assert track.statement.first("init_file").args == ["1", "overwrite"]  # type: ignore[union-attr]
    assert [e.name for e in config.instances[0].tracked("track_file")] == ["gateway_check"]
    text = (tmp_path / "node1.conf").read_text()
    assert ("#   GATEWAY_CHECK_ARGS=--watch --track-file /run/gateway-check/state --interval 0.1 "
            "--fall 1 --rise 2 --hold-syn 192.0.2.100 --hold-ports 8080,443 --hold-seconds 0.3 "
            "--http http://127.0.0.1:9180/readyz --tcp 127.0.0.1:8080 --timeout 1\n") in text


def test_script_mode(tmp_path: Path) -> None:
    data = example(check={"mode": "script", "docker_service": ["gw_gateway"], "tcp":
                          ["127.0.0.1:8443"], "timeout": 0.8, "fall": 2, "rise": 3})
    config = render_all(data, tmp_path)["node2"]
    script = config.scripts["gateway_check"]
    assert script.script == ("/usr/local/bin/gateway-check --http http://127.0.0.1:9180/readyz "
                             "--tcp 127.0.0.1:8443 --docker-service gw_gateway --timeout 0.8 "
                             "--quiet")
    values = {s.keyword: s.args for s in script.statement.children or []}
    assert values["interval"] == ["1"]
    assert values["timeout"] == ["2"], "keepalived's own timeout leaves gateway-check room"
    assert (values["fall"], values["rise"], values["weight"]) == (["2"], ["3"], ["0"])
    assert "init_fail" in values
    assert [e.name for e in config.instances[0].tracked("track_script")] == ["gateway_check"]


def test_unicast_peers_are_the_other_nodes(tmp_path: Path) -> None:
    configs = render_all(example(unicast=True), tmp_path)
    for name, config in configs.items():
        instance = config.instances[0]
        own = {"node1": "192.0.2.11", "node2": "192.0.2.12", "node3": "192.0.2.13"}[name]
        assert instance.value("unicast_src_ip").args == [own]  # type: ignore[union-attr]
        peers = {s.keyword for s in instance.value("unicast_peer").children or []}  # type: ignore[union-attr]
        assert peers == {"192.0.2.11", "192.0.2.12", "192.0.2.13"} - {own}


def test_nopreempt_and_vrrpv2_authentication(tmp_path: Path) -> None:
    configs = render_all(example(preempt=False, vrrp_version=2, auth_pass="s3cret"), tmp_path)
    instance = configs["node1"].instances[0]
    assert instance.nopreempt
    assert instance.state == "BACKUP", "nopreempt only works from BACKUP"
    auth = instance.authentication
    assert auth is not None
    assert auth.first("auth_pass").args == ["s3cret"]  # type: ignore[union-attr]
    assert configs["node1"].version(instance) == 2


def test_node_placeholder_in_paths(tmp_path: Path) -> None:
    data = example(notify="/usr/local/bin/gateway-agent keepalived notify --textfile "
                          "/srv/{node}/keepalived.prom",
                   check={"track_file": "/run/{node}/state"})
    config = render_all(data, tmp_path)["node3"]
    assert config.track_files["gateway_check"].file == "/run/node3/state"
    notify = config.instances[0].value("notify")
    assert notify is not None
    assert notify.args == ["/usr/local/bin/gateway-agent keepalived notify --textfile "
                           "/srv/node3/keepalived.prom"]


def test_every_problem_at_once_with_its_place() -> None:
    data = example(vrrp_version=3, auth_pass="toolongpassword")
    data["nodes"][2]["priority"] = 240
    data["vips"] = ["not-an-address"]
    data["check"]["http"] = ["http://x/ path"]
    with pytest.raises(ClusterError) as caught:
        cluster_from_dict(data, "cluster.yaml")
    lines = str(caught.value).splitlines()
    assert lines == [
        "cluster.yaml: vips[0]: 'not-an-address' is not an address with an optional /prefix",
        "cluster.yaml: auth_pass: String should have at most 8 characters",
        "cluster.yaml: check.http[0]: 'http://x/ path' must be one word without quotes, "
        "backslashes, '#', '!', '$' or braces (keepalived would change it)",
    ]


def test_problems_across_fields_at_once_with_their_places() -> None:
    data = example(vrrp_version=2, vips=["192.0.2.100/24", "2001:db8::1/64"],
                   check={"weight": -5})
    data["nodes"][2]["priority"] = 240
    with pytest.raises(ClusterError) as caught:
        cluster_from_dict(data, "cluster.yaml")
    assert str(caught.value).splitlines() == [
        "cluster.yaml: nodes[2].priority: 240 is also the priority of nodes[1]; every node "
        "needs its own",
        "cluster.yaml: vips: IPv4 and IPv6 cannot share one vrrp_instance; use one instance "
        "(one cluster file) per address family",
        "cluster.yaml: vips[1]: VRRPv2 carries IPv4 only; use vrrp_version 3",
        "cluster.yaml: check.weight: -5 cannot move the VIP: a failed node with priority 250 "
        "would still have 245, not below the healthy node with 240; use weight 0 (FAULT) or at "
        "most -11",
    ]


@pytest.mark.parametrize(("changes", "message"), [
    ({"nodes_priority": 240}, "240 is also the priority of nodes\\[1\\]"),
    ({"vrrp_version": 3, "auth_pass": "abc"}, "VRRPv3 has no authentication"),
    ({"vrrp_version": 2, "advert_int": 0.5}, "VRRPv2 counts whole seconds"),
    ({"vrrp_version": 2, "vips": ["2001:db8::1/64"]}, "VRRPv2 carries IPv4 only"),
    ({"check": {"weight": -20}}, "check.weight: -20 cannot move the VIP"),
    ({"check": {"http": [], "tcp": [], "docker_service": []}}, "at least one of"),
    ({"check": {"command": "gateway-check"}}, "must be an absolute path"),
])
def test_rejected_clusters(changes: dict[str, Any], message: str) -> None:
    changes = copy.deepcopy(changes)
    priority = changes.pop("nodes_priority", None)
    data = example(**changes)
    if priority is not None:
        data["nodes"][2]["priority"] = priority
    with pytest.raises(ClusterError, match=message):
        cluster_from_dict(data)


def test_large_enough_negative_weight_is_accepted(tmp_path: Path) -> None:
    configs = render_all(example(check={"mode": "script", "weight": -21}), tmp_path)
    assert configs["node1"].scripts["gateway_check"].weight == -21
    assert lint_files([tmp_path / f"node{i}.conf" for i in (1, 2, 3)], check_files=False) == []


@pytest.mark.parametrize("changes", [
    {},
    {"check": {"mode": "script"}},
    {"unicast": True},
    {"preempt": False},
    {"vrrp_version": 2, "auth_pass": "s3cret"},
    {"advert_int": 0.2, "check": {"mode": "script", "docker_service": ["gw_gateway"]}},
])
def test_lint_finds_nothing_in_rendered_configs(tmp_path: Path, changes: dict[str, Any]) -> None:
    render_all(example(**copy.deepcopy(changes)), tmp_path)
    assert lint_files(sorted(tmp_path.glob("*.conf")), check_files=False) == []


def test_lint_with_the_scripts_of_this_machine_finds_nothing(tmp_path: Path) -> None:
    """The same, with the script and notify commands on this machine and the script user the
    one running the tests (root in CI): lint also checks the files keepalived will run."""
    gateway_check = Path(sys.executable).parent / "gateway-check"
    if not gateway_check.exists():
        missing("gateway-check is not installed beside this interpreter (pip install -e .)")
    folder = tmp_path / "configs"
    folder.mkdir()
    user = pwd.getpwuid(os.getuid()).pw_name
    data = example(script_user=user, notify=str(gateway_check),
                   check={"mode": "script", "command": str(gateway_check)})
    render_all(data, folder)
    assert lint_files(sorted(folder.glob("*.conf"))) == []


def test_committed_example_is_what_render_writes() -> None:
    cluster = load_cluster(EXAMPLE)
    for node in cluster.nodes:
        committed = ROOT / "keepalived" / "example" / f"{node.name}.conf"
        assert committed.read_text() == render_node(cluster, node.name, EXAMPLE.name), (
            f"{committed} is stale: gateway-agent keepalived render --cluster "
            "keepalived/cluster.example.yaml --output-dir keepalived/example")


def test_cli_render(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("render", "--cluster", str(EXAMPLE), "--node", "node2") == 0
    assert "priority 240" in capsys.readouterr().out
    assert cli("render", "--cluster", str(EXAMPLE), "--output-dir", str(tmp_path / "out")) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "node1.conf", "node2.conf", "node3.conf"]
    assert cli("render", "--cluster", str(EXAMPLE), "--node", "node9") == 1
    assert "no node 'node9'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        cli("render", "--cluster", str(EXAMPLE))
    assert exited.value.code == 2


def test_a_key_given_twice_in_the_cluster_file_is_refused(tmp_path: Path) -> None:
    """YAML keeps the last of two equal keys without a word: a second `priority:` under a node
    would silently decide which node holds the VIP."""
    text = EXAMPLE.read_text()
    assert "    priority: 250\n" in text
    path = tmp_path / "cluster.yaml"
    path.write_text(text.replace("    priority: 250\n", "    priority: 250\n    priority: 90\n",
                                 1))
    with pytest.raises(ClusterError, match=r"line \d+ column \d+: invalid YAML: duplicate key "
                                           r"'priority'"):
        load_cluster(path)
    path.write_text(text)
    assert load_cluster(path).nodes  # the file itself is fine
