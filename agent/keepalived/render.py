"""One cluster description (YAML) -> each node's keepalived.conf.

What it guarantees, so that nobody has to remember it:

- one `vrrp_instance` with the SAME name and virtual_router_id on every node (VRRP tells the
  members of one virtual router by that id; different ids make independent routers that each
  take the VIP);
- a distinct priority per node, and the HIGHEST priority wins;
- every node starts as BACKUP and the election decides (`nopreempt` only works that way);
- the gateway check moves the VIP: weight 0 (a failed check puts the instance in FAULT, it
  sends a priority-0 advert and the next node takes over at once), or a negative weight that is
  checked to be large enough to drop the failed node below every healthy one;
- `enable_script_security` with a `script_user`, and `fall`/`rise`/`timeout` always written;
- optional unicast (`unicast_src_ip`, `unicast_peer`) for networks without multicast;
- a `notify` hook that records transitions (see notify.py).

Two check modes: `script` (keepalived runs `gateway-check` every `interval` whole seconds) and
`track_file` (the `gateway-check --watch` service writes a file keepalived watches with inotify;
it reacts within the watcher's interval, a tenth of a second by default).
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
)

from agent.core.errors import place
from agent.core.errors import problems as validation_problems
from agent.core.yamlfile import YamlError, load_yaml

GENERATED_BY = "gateway-agent keepalived render"
NODE = "{node}"  # in track_file and notify: replaced by the node's name
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
# one word that keepalived passes through unchanged inside a quoted script line: no blanks,
# quotes, backslashes, comment starts, braces, or `$` (which keepalived substitutes)
_WORD = re.compile(r"^[^\s\"'\\#!{}$]+$")


class ClusterError(ValueError):
    """A cluster description that cannot be rendered; one line per problem, each with its place."""


def _address(value: object) -> str:
    try:
        return str(ipaddress.ip_address(str(value)))
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address") from None


def _interface_address(value: object) -> str:
    try:
        return ipaddress.ip_interface(str(value)).with_prefixlen
    except ValueError:
        raise ValueError(f"{value!r} is not an address with an optional /prefix") from None


def _word(value: str) -> str:
    if not _WORD.match(value.replace(NODE, "node")):
        raise ValueError(f"{value!r} must be one word without quotes, backslashes, '#', '!', "
                         "'$' or braces (keepalived would change it)")
    return value


def _absolute(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f"{value!r} must be an absolute path")
    return _word(value)


Address = Annotated[str, BeforeValidator(_address)]
InterfaceAddress = Annotated[str, BeforeValidator(_interface_address)]
Word = Annotated[str, AfterValidator(_word)]
AbsolutePath = Annotated[str, AfterValidator(_absolute)]
Name = Annotated[str, Field(pattern=_NAME)]
UserName = Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_-]*$")]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NodeSpec(_Model):
    name: Name
    interface: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:@-]{1,15}$")]
    address: Address
    priority: Annotated[int, Field(ge=1, le=254)]


class CheckSpec(_Model):
    mode: Literal["script", "track_file"] = "script"
    command: AbsolutePath = "/usr/local/bin/gateway-check"
    http: list[Word] = []
    tcp: list[Word] = []
    docker_service: list[Word] = []
    timeout: Annotated[float, Field(gt=0, le=30)] = 1.0
    # vrrp_script: keepalived 2.2 runs scripts at whole-second intervals
    interval: Annotated[int, Field(ge=1, le=60)] = 1
    # failed checks before the node gives the VIP up, good ones before it may take it again
    # (script runs, or watcher rounds)
    fall: Annotated[int, Field(ge=1, le=100)] = 1
    rise: Annotated[int, Field(ge=1, le=100)] = 2
    # 0: a failed check puts the instance in FAULT (fastest hand-over); negative: lowers priority
    weight: Annotated[int, Field(ge=-253, le=0)] = 0
    # track_file mode: the file the watcher writes, and its probing interval
    track_file: AbsolutePath = "/run/gateway-check/state"
    watch_interval: Annotated[float, Field(gt=0, le=10)] = 0.1
    # track_file mode: a draining gateway's VIP is handed over without cutting connections:
    # new ones to these ports are dropped (the clients send them again) for hold_seconds
    # first (agent/check/hold.py); [] turns it off
    hold_ports: list[Annotated[int, Field(gt=0, lt=65536)]] = [8080, 443]
    hold_seconds: Annotated[float, Field(gt=0, le=5)] = 0.3

    def argv(self) -> list[str]:
        """The gateway-check arguments that name the checks (shared by both modes)."""
        args: list[str] = []
        for url in self.http:
            args += ["--http", url]
        for target in self.tcp:
            args += ["--tcp", target]
        for service in self.docker_service:
            args += ["--docker-service", service]
        return [*args, "--timeout", f"{self.timeout:g}"]

    def watcher_args(self, vips: Sequence[str] = ()) -> list[str]:
        """The watcher's arguments (after the command): keepalived/gateway-check-watch.service
        reads them as GATEWAY_CHECK_ARGS. `vips`: the cluster's, held for a drain."""
        hold: list[str] = []
        if self.hold_ports and vips:
            for vip in vips:
                hold += ["--hold-syn", vip.split("/")[0]]
            hold += ["--hold-ports", ",".join(map(str, self.hold_ports)),
                     "--hold-seconds", f"{self.hold_seconds:g}"]
        return ["--watch", "--track-file", self.track_file, "--interval",
                f"{self.watch_interval:g}", "--fall", str(self.fall), "--rise", str(self.rise),
                *hold, *self.argv()]


class Cluster(_Model):
    instance: Name = "gateway"
    virtual_router_id: Annotated[int, Field(ge=1, le=255)]
    vips: Annotated[list[InterfaceAddress], Field(min_length=1)]
    vrrp_version: Literal[2, 3] = 3
    # seconds; VRRPv3 allows hundredths, VRRPv2 whole seconds only
    advert_int: Annotated[float, Field(gt=0, le=40)] = 1.0
    preempt: bool = True
    auth_pass: Annotated[str, Field(min_length=1, max_length=8, pattern=r"^\S+$")] | None = None
    unicast: bool = False
    script_user: UserName = "keepalived_script"
    script_group: UserName | None = None
    # the command keepalived runs on every transition (it appends TYPE NAME STATE PRIORITY)
    notify: Annotated[str, Field(pattern=r'^/[^"\\$!#{}]*(\{node\}[^"\\$!#{}]*)*$')] | None = None
    check: CheckSpec
    nodes: Annotated[list[NodeSpec], Field(min_length=1)]

    def node(self, name: str) -> NodeSpec:
        for node in self.nodes:
            if node.name == name:
                return node
        raise ClusterError(f"no node {name!r} in the cluster (nodes: "
                           f"{', '.join(n.name for n in self.nodes)})")


def problems(cluster: Cluster) -> list[str]:
    """What no single field can say: `place: message` for each problem across fields."""
    found: list[str] = []
    for attribute in ("name", "priority", "address"):
        first: dict[str, int] = {}
        for index, node in enumerate(cluster.nodes):
            value = str(getattr(node, attribute))
            if value in first:
                found.append(f"nodes[{index}].{attribute}: {value} is also the {attribute} of "
                             f"nodes[{first[value]}]; every node needs its own")
            else:
                first[value] = index
    families = {ipaddress.ip_interface(vip).version for vip in cluster.vips}
    if len(families) > 1:
        found.append("vips: IPv4 and IPv6 cannot share one vrrp_instance; use one instance "
                     "(one cluster file) per address family")
    if cluster.vrrp_version == 2:
        for index, vip in enumerate(cluster.vips):
            if ipaddress.ip_interface(vip).version == 6:
                found.append(f"vips[{index}]: VRRPv2 carries IPv4 only; use vrrp_version 3")
        if cluster.advert_int != int(cluster.advert_int):
            found.append("advert_int: VRRPv2 counts whole seconds; use vrrp_version 3 for a "
                         "fraction")
    elif cluster.auth_pass is not None:
        found.append("auth_pass: VRRPv3 has no authentication (keepalived ignores it); drop it "
                      "or use vrrp_version 2")
    check = cluster.check
    if not (check.http or check.tcp or check.docker_service):
        found.append("check: give at least one of http, tcp, docker_service")
    if check.weight < 0 and len(cluster.nodes) > 1:
        priorities = sorted(n.priority for n in cluster.nodes)
        highest, lowest = priorities[-1], priorities[0]
        if highest + check.weight >= lowest:
            found.append(
                f"check.weight: {check.weight} cannot move the VIP: a failed node with priority "
                f"{highest} would still have {highest + check.weight}, not below the healthy "
                f"node with {lowest}; use weight 0 (FAULT) or at most {lowest - highest - 1}")
    return found


def load_cluster(path: str | Path) -> Cluster:
    """Read and validate a cluster file; every problem at once, each with its place."""
    try:
        data: Any = load_yaml(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ClusterError(f"{path}: cannot read: {exc.strerror}") from None
    except YamlError as exc:
        raise ClusterError(f"{path}: {exc}") from None
    return cluster_from_dict(data, str(path))


def cluster_from_dict(data: Any, source: str = "cluster") -> Cluster:
    try:
        cluster = Cluster.model_validate(data)
    except ValidationError as exc:
        raise ClusterError("\n".join(f"{source}: {place(loc)}: {message}"
                                     for loc, message in validation_problems(
                                         exc, secrets=frozenset({"auth_pass"})))) from None
    found = problems(cluster)
    if found:
        raise ClusterError("\n".join(f"{source}: {line}" for line in found))
    return cluster


def _script_line(argv: list[str]) -> str:
    # keepalived 2.2 splits the line at blanks and execs it without a shell; every word was
    # checked against _WORD, so joining them is exact
    return " ".join(argv)


def render_node(cluster: Cluster, node_name: str, source: str = "the cluster file") -> str:
    """The keepalived.conf text for one node. Pure: no I/O."""
    node = cluster.node(node_name)
    check = cluster.check
    track_file = check.track_file.replace(NODE, node.name)
    out: list[str] = [
        f"# Generated by {GENERATED_BY} from {source} for node {node.name}. Do not edit:",
        "# change the cluster file and render again.",
    ]
    if check.mode == "track_file":
        watcher = _script_line(check.watcher_args(cluster.vips)).replace(NODE, node.name)
        out += ["# The gateway-check watcher writes the track file: run it next to keepalived",
                "# (keepalived/gateway-check-watch.service) with, in /etc/default/gateway-check:",
                f"#   GATEWAY_CHECK_ARGS={watcher}"]
    user = cluster.script_user + (f" {cluster.script_group}" if cluster.script_group else "")
    out += [
        "",
        "global_defs {",
        f"    router_id {node.name}",
        "    # refuse to run scripts that a non-root user could change",
        "    enable_script_security",
        f"    script_user {user}",
        "}",
        "",
    ]
    track_name = "gateway_check"
    if check.mode == "script":
        out += [
            f"vrrp_script {track_name} {{",
            f'    script "{_script_line([check.command, *check.argv(), "--quiet"])}"',
            f"    interval {check.interval}",
            # keepalived counts whole seconds; leave gateway-check's own deadline room to answer
            f"    timeout {max(1, math.ceil(check.timeout)) + 1}",
            f"    fall {check.fall}",
            f"    rise {check.rise}",
            f"    weight {check.weight}" + ("    # 0: a failed check means FAULT"
                                            if check.weight == 0 else ""),
            "    # a node that has not passed its check yet must not take the VIP",
            "    init_fail",
            "}",
            "",
        ]
    else:
        out += [
            f"track_file {track_name} {{",
            f'    file "{track_file}"',
            "    # 0 = OK; with weight 0 any other value means FAULT",
            f"    weight {check.weight}",
            "    # FAULT until the watcher has written what it found",
            "    init_file 1 overwrite",
            "}",
            "",
        ]
    out += [
        f"vrrp_instance {cluster.instance} {{",
        "    # every node starts as BACKUP: the election picks the highest priority",
        "    state BACKUP",
        f"    interface {node.interface}",
        "    # the SAME id on every node: it is what makes them one virtual router",
        f"    virtual_router_id {cluster.virtual_router_id}",
        "    # distinct per node; the HIGHEST wins",
        f"    priority {node.priority}",
        f"    advert_int {cluster.advert_int:g}",
        f"    version {cluster.vrrp_version}",
    ]
    if not cluster.preempt:
        out.append("    nopreempt")
    if cluster.unicast:
        out.append(f"    unicast_src_ip {node.address}")
        out.append("    unicast_peer {")
        out += [f"        {peer.address}" for peer in cluster.nodes if peer.name != node.name]
        out.append("    }")
    if cluster.auth_pass is not None:
        out += ["    authentication {", "        auth_type PASS",
                f"        auth_pass {cluster.auth_pass}", "    }"]
    out.append("    virtual_ipaddress {")
    out += [f"        {vip} dev {node.interface}" for vip in cluster.vips]
    out.append("    }")
    block = "track_script" if check.mode == "script" else "track_file"
    out += [f"    {block} {{", f"        {track_name}", "    }"]
    if cluster.notify:
        out.append(f'    notify "{cluster.notify.replace(NODE, node.name)}"')
    out += ["}", ""]
    return "\n".join(out)
