from __future__ import annotations

import argparse

import pytest

from agent.core.settings import HostPort, SettingsError, parse_host_port
from agent.gateway import settings


def parse(argv: list[str], env: dict[str, str] | None = None) -> settings.GatewaySettings:
    p = argparse.ArgumentParser()
    settings.add_arguments(p)
    return settings.from_sources(p.parse_args(argv), env or {})


def test_defaults_match_the_documentation() -> None:
    s = parse([])
    assert s.nameserver == HostPort("127.0.0.11", 53)
    assert s.listen == HostPort("0.0.0.0", 8080)
    assert s.admin_listen == HostPort("0.0.0.0", 9180)
    assert s.poll_interval == 1.0


def test_flags_win_over_environment_which_wins_over_defaults() -> None:
    env = {"GATEWAY_POLL_INTERVAL": "5", "GATEWAY_ZONE": "dmz", "GATEWAY_LISTEN": "9000"}
    s = parse(["--poll-interval", "0.5"], env)
    assert s.poll_interval == 0.5
    assert s.zone == "dmz"
    assert s.listen == HostPort("0.0.0.0", 9000)


def test_every_bad_value_is_named_with_its_source() -> None:
    with pytest.raises(SettingsError) as info:
        parse(["--listen", "host.example:80", "--zone", "DMZ;"],
              {"GATEWAY_POLL_INTERVAL": "-1", "GATEWAY_WORKER_PROCESSES": "auto; user root"})
    text = str(info.value)
    for place in ("--listen", "--zone", "GATEWAY_POLL_INTERVAL", "GATEWAY_WORKER_PROCESSES"):
        assert place in text


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.11", HostPort("127.0.0.11", 53)),
    ("127.0.0.11:5353", HostPort("127.0.0.11", 5353)),
    ("[::1]:53", HostPort("::1", 53)),
    ("::1", HostPort("::1", 53)),
])
def test_nameserver_forms(text: str, expected: HostPort) -> None:
    assert parse_host_port(text, default_port=53) == expected


@pytest.mark.parametrize("text", ["", ":53", "host:0", "host:70000", "host:x", "[::1"])
def test_bad_host_ports(text: str) -> None:
    with pytest.raises(ValueError, match=r".+"):
        parse_host_port(text, default_port=53)


def test_dns_control_name_is_automatic_only_for_dockers_dns() -> None:
    from agent.gateway.daemon import control_name

    assert control_name(parse(["--nameserver", "127.0.0.53:5353"])) is None
    docker = control_name(parse([]))
    assert docker is None or docker.endswith(".in-addr.arpa") or docker.endswith(".ip6.arpa")
    assert control_name(parse(["--dns-control-name", "none"])) is None
    assert control_name(parse(["--dns-control-name", "tasks.gateway"])) == "tasks.gateway"


def test_task_networks_default_to_docker_s_pools_and_never_take_link_local() -> None:
    assert [str(n) for n in parse([]).task_networks] == [
        "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"]
    s = parse([], {"GATEWAY_TASK_NETWORKS": "10.10.0.0/16, 127.0.0.0/8"})
    assert [str(n) for n in s.task_networks] == ["10.10.0.0/16", "127.0.0.0/8"]
    for bad, words in (("169.254.0.0/16", "link-local"), ("0.0.0.0/0", "link-local"),
                       ("fe80::/64", "link-local"), ("::/0", "link-local"), (",", "at least one"),
                       ("10.0.0.0/33", "not an address")):
        with pytest.raises(SettingsError) as info:
            parse(["--task-networks", bad])
        assert str(info.value).startswith("--task-networks: "), bad
        assert words in str(info.value), (bad, str(info.value))
