"""The article's cluster on one machine: Docker-in-Docker swarm nodes, the stacks, keepalived.

    python -m tests.support.cluster up       (make cluster)   build, start, deploy, say what to try
    python -m tests.support.cluster down     (make cluster-down) remove all of it
    python -m tests.support.cluster status   the nodes, the services' tasks, who holds the VIP

Six nodes, each a container running its own dockerd (Debian's docker.io) on a network of the
cluster's own (10.213.70.0/24; nothing else uses it):

    node     address       labels                          role
    manager  10.213.70.10  zone.manager=true               swarm manager; the controller
    gw1      10.213.70.11  gateway=true                    http-gateway, keepalived priority 250
    gw2      10.213.70.12  gateway=true                    http-gateway, keepalived priority 240
    dmz      10.213.70.13  zone.dmz=true dmz-gateway=true  dmz-gateway, dmzhttp
    intra1   10.213.70.14  zone.intra=true                 intrahttp
    intra2   10.213.70.15  zone.intra=true                 intrahttp
    client   10.213.70.2                                   a container for clients (busybox)
    VIP      10.213.70.100                                 held by gw1 or gw2 (keepalived)

The project's images are built on the host (scripts/images.sh) and loaded into every node
(`docker save | docker load`: there is no registry); the stacks are deployed on the manager with
the commands of docs/swarm.md. keepalived runs inside the gateway nodes, configured by
`agent.keepalived.render` from one cluster description, with the `gateway-check` watcher on the
node's host-mode ports and a track_file.

What differs from a real swarm, because of this machine's kernel:

- no IPVS: a service's virtual IP and the ingress routing mesh do not work on these nodes. The
  gateways route to task addresses (`tasks.<service>`), as the product does everywhere, and
  publish their ports in host mode; nothing here needs IPVS.
- no ESP (IPsec): encrypted overlays carry nothing between nodes, so the gateway stack is deployed
  with its two control networks unencrypted (`unencrypted()`); every other line of the stacks is
  what users deploy.

Every container, network and image this makes is named `gwcluster-...` and labelled
`swarm-gateway.cluster`; `down` removes exactly those, and stops the host's dockerd only if
`up` started it. What `up` made is remembered in the state folder (default .work/cluster).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import yaml

from agent.keepalived.render import cluster_from_dict, render_node
from tests.support import Measurements
from tests.support.netns import Namespace

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "gwcluster"
LABEL = "swarm-gateway.cluster"
NETWORK = f"{PREFIX}-net"
SUBNET = "10.213.70"
# docker allocates nothing by itself here: every container gets its --ip, the VIP stays free.
# Internal: no route out of it, so nothing in the cluster can send a packet past this machine
# (an address outside the cluster is unreachable, not forwarded to the host's own network)
NETWORK_ARGS = ["--internal", "--subnet", f"{SUBNET}.0/24", "--ip-range", f"{SUBNET}.128/25"]
VIP = f"{SUBNET}.100"
CLIENT_ADDRESS = f"{SUBNET}.2"
# the overlays inside the swarm (docker's default pool, 10.0.0.0/8, is too wide to share a host)
ADDRESS_POOL = "10.214.0.0/16"
INTERFACE = "eth0"
IMAGES = {
    "GATEWAY_IMAGE": "swarm-gateway/http-gateway:cluster",
    "APP_IMAGE": "swarm-gateway/hostname-httpd:cluster",
}
NODE_IMAGE = f"{PREFIX}-node:latest"
# Debian's docker.io and keepalived in a minbase root filesystem (kept as a cache, like the
# gateway's base image; `down --images` removes it)
NODE_PACKAGES = "docker.io,iptables,iproute2,ca-certificates,procps,keepalived,python3-venv,openssl"
NODE_BASE_IMAGE = f"{PREFIX}-node-base:bookworm"
# what the stacks see inside the manager node (docs/swarm.md's paths are relative to it)
REMOTE_ROOT = "/srv/swarm-gateway"
DEMO_CERTS = ".work/demo/certs"
GATEWAY_PORT, HTTPS_PORT, ADMIN_PORT = 8080, 443, 9180
DMZ_GATEWAY_PORT, DMZ_ADMIN_PORT = 8081, 9181
# advert_int 0.2 s (VRRPv3): a dead node's adverts are missed after 3 x 0.2 s + skew, about
# 0.6 s; keepalived's default (1 s) would take about 3.1 s
ADVERT_INT = 0.2
TRACK_FILE = "/run/gateway-check/state"


_clock = [time.monotonic()]


def log(message: str) -> None:
    """A progress line, with the seconds since `up` started (or since the import)."""
    print(f"cluster [{time.monotonic() - _clock[0]:5.0f} s]: {message}", file=sys.stderr,
          flush=True)


def run(*args: str, input: bytes | str | None = None, check: bool = True,
        timeout: float = 120, env: dict[str, str] | None = None) -> str:
    """A command's stdout; an AssertionError with its output when it fails and `check`."""
    binary = isinstance(input, bytes)
    proc = subprocess.run(args, input=input, capture_output=True, text=not binary,
                          timeout=timeout, check=False, cwd=ROOT,
                          env={**os.environ, **IMAGES, **(env or {})})
    out = proc.stdout.decode(errors="replace") if binary else proc.stdout
    err = proc.stderr.decode(errors="replace") if binary else proc.stderr
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {proc.returncode}:\n{out}{err}")
    return str(out)


def wait_for(probe: Callable[[], T | None], timeout: float, what: str,
             interval: float = 0.5) -> T:
    """Call `probe` until it returns something truthy; fail naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        try:
            result = probe()
            if result:
                return result
        except Exception as exc:
            last = exc
        if time.monotonic() >= deadline:
            detail = f" (last error: {last})" if last else ""
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
        time.sleep(interval)


@dataclass(frozen=True)
class Node:
    name: str
    address: str
    labels: tuple[str, ...]
    priority: int | None = None  # keepalived's, on the gateway nodes

    @property
    def container(self) -> str:
        return f"{PREFIX}-{self.name}"

    @property
    def hostname(self) -> str:
        """The swarm's name of the node."""
        return self.container


NODES = (
    Node("manager", f"{SUBNET}.10", ("zone.manager=true",)),
    Node("gw1", f"{SUBNET}.11", ("gateway=true",), priority=250),
    Node("gw2", f"{SUBNET}.12", ("gateway=true",), priority=240),
    Node("dmz", f"{SUBNET}.13", ("zone.dmz=true", "dmz-gateway=true")),
    Node("intra1", f"{SUBNET}.14", ("zone.intra=true",)),
    # a second node of the zone, for its tasks to move to when the first one dies
    Node("intra2", f"{SUBNET}.15", ("zone.intra=true",)),
)
CLIENT = f"{PREFIX}-client"
SERVICES = {
    "managerhttp": "manager_managerhttp", "intrahttp": "intra_intrahttp",
    "dmzhttp": "dmz_dmzhttp", "http-gateway": "gateway_http-gateway",
    "dmz-gateway": "gateway_dmz-gateway", "gateway-controller": "controller_gateway-controller",
}


def node(name: str) -> Node:
    for n in NODES:
        if n.name == name:
            return n
    raise KeyError(name)


def gateway_nodes() -> list[Node]:
    return [n for n in NODES if n.priority is not None]


def _exchange(address: str, port: int, request: bytes, timeout: float) -> tuple[int, str]:
    try:
        with socket.create_connection((address, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(request)
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
    except OSError:
        return 0, ""
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    match = re.match(rb"HTTP/1\.[01] (\d{3})", head)
    return (int(match.group(1)) if match else 0), body.decode(errors="replace").strip()


# --- docker on the host -------------------------------------------------------------------------

def docker_answers() -> bool:
    return subprocess.run(["docker", "info"], capture_output=True, timeout=30,
                          check=False).returncode == 0


def start_dockerd(state: Path) -> None:
    """The host's dockerd, started (and remembered in `state`) unless it answers."""
    if docker_answers():
        return
    if shutil.which("dockerd") is None:
        raise AssertionError("dockerd is not installed (scripts/setup.sh demo installs docker.io)")
    state.mkdir(parents=True, exist_ok=True)
    logfile = open(state / "dockerd.log", "ab")  # noqa: SIM115 - dockerd keeps it
    proc = subprocess.Popen(["dockerd"], stdout=logfile, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    (state / "dockerd.pid").write_text(str(proc.pid))
    log(f"started dockerd (log: {state / 'dockerd.log'})")
    wait_for(docker_answers, 60, "dockerd to answer")


def stop_dockerd(state: Path) -> None:
    pidfile = state / "dockerd.pid"
    if not pidfile.exists():
        return
    pid = int(pidfile.read_text())

    def gone() -> bool:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # started by this process: reap it
        try:
            return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
        except OSError:
            return True

    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/comm").read_text().strip() == "dockerd":
            os.kill(pid, 15)
            wait_for(gone, 60, "dockerd to stop")
            log("stopped the dockerd it started")
    pidfile.unlink()


def have_image(image: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", image], capture_output=True,
                          timeout=30, check=False).returncode == 0


# --- images -------------------------------------------------------------------------------------

def build_project_images() -> None:
    """The gateway and the upstream image (scripts/images.sh, with the cluster's tags)."""
    run("scripts/images.sh", "auto", timeout=900)


def build_node_image() -> None:
    """The node image: the cached debootstrap base and the project's gateway-check."""
    if not have_image(NODE_BASE_IMAGE):
        build_node_base()
    with tempfile.TemporaryDirectory(prefix=f"{PREFIX}-") as tmp:
        ctx = Path(tmp)
        shutil.copy(ROOT / "images/cluster-node/Dockerfile", ctx / "Dockerfile")
        run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--wheel-dir",
            str(ctx / "wheels"), str(ROOT), timeout=300)
        run("docker", "build", "-q", "--label", LABEL, "--build-arg",
            f"BASE_IMAGE={NODE_BASE_IMAGE}", "-t", NODE_IMAGE, str(ctx), timeout=300)


def images_for(n: Node) -> list[str]:
    """The images a node's tasks run, as a real node pulls only those: the gateway image where
    a gateway, the controller or its Docker socket proxy runs (the gateway nodes, the manager),
    the application image on the nodes of a zone."""
    images = []
    if n.name == "manager" or any(label.startswith(("gateway=", "dmz-gateway="))
                                  for label in n.labels):
        images.append(IMAGES["GATEWAY_IMAGE"])
    if any(label.startswith("zone.") for label in n.labels):
        images.append(IMAGES["APP_IMAGE"])
    return images


def debian_mirror() -> str:
    """The first `URIs:` of the host's Debian sources, read here and written nowhere."""
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.exists():
        for line in sources.read_text().splitlines():
            if line.startswith("URIs:"):
                return line.split()[1]
    raise AssertionError("no Debian mirror found in /etc/apt/sources.list.d/debian.sources")


def build_node_base() -> None:
    if shutil.which("debootstrap") is None:
        raise AssertionError("debootstrap is not installed (scripts/setup.sh demo)")
    log(f"debootstrap bookworm with {NODE_PACKAGES} (about two minutes)")
    with tempfile.TemporaryDirectory(prefix=f"{PREFIX}-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        run("debootstrap", "--variant=minbase", f"--include={NODE_PACKAGES}", "bookworm",
            str(rootfs), debian_mirror(), timeout=900)
        # the apt sources name this machine's mirror: they stay out of the image, as do caches
        for pattern in ("etc/apt/sources.list", "etc/apt/sources.list.d/*",
                        "var/cache/apt/archives/*.deb", "var/lib/apt/lists/*"):
            for path in rootfs.glob(pattern):
                if path.is_file():
                    path.unlink()
        tar = subprocess.Popen(["tar", "--numeric-owner", "-C", str(rootfs), "--exclude=./dev/*",
                                "--exclude=./proc/*", "--exclude=./sys/*", "-c", "."],
                               stdout=subprocess.PIPE)
        try:
            subprocess.run(["docker", "import", "-c", "CMD [\"/bin/bash\"]", "-",
                            NODE_BASE_IMAGE], stdin=tar.stdout, capture_output=True,
                           check=True, timeout=600)
        finally:
            assert tar.stdout is not None
            tar.stdout.close()
            tar.wait(60)
    log(f"built {NODE_BASE_IMAGE}")


ENCRYPTED = '    driver_opts: {encrypted: ""}\n'


def unencrypted(stack: Path) -> None:
    """The one change to the stacks the cluster makes: this kernel has no ESP (IPsec), so the
    encrypted overlays of the gateways' control networks carry nothing between nodes ("Failed
    Adding SA ...: function not implemented" in dockerd's log). On a real swarm they stay
    encrypted; here they are plain overlays."""
    text = stack.read_text()
    if text.count(ENCRYPTED) != 2:
        raise AssertionError(f"{stack.name}: expected the two encrypted control networks")
    stack.write_text(text.replace(ENCRYPTED, ""))


# --- the cluster --------------------------------------------------------------------------------

@dataclass
class Cluster:
    """The running cluster: nodes, the client container, the deployed stacks, keepalived."""

    state: Path
    description: dict[str, Any] = field(default_factory=dict)
    _client: Namespace | None = None

    # --- running commands --------------------------------------------------------------------

    def exec(self, n: Node | str, *args: str, input: bytes | str | None = None,
             check: bool = True, timeout: float = 120) -> str:
        """A command inside a node container (its own network namespace and dockerd)."""
        container = n.container if isinstance(n, Node) else n
        prefix = ["docker", "exec", "-i"] if input is not None else ["docker", "exec"]
        return run(*prefix, container, *args, input=input, check=check, timeout=timeout)

    def docker(self, *args: str, on: Node | None = None, check: bool = True,
               input: bytes | str | None = None, timeout: float = 120) -> str:
        """`docker ...` against a node's dockerd (the manager's unless `on`)."""
        return self.exec(on or node("manager"), "docker", *args, check=check, input=input,
                         timeout=timeout)

    # --- bringing it up ----------------------------------------------------------------------

    def up(self) -> None:
        started = _clock[0] = time.monotonic()
        self.state.mkdir(parents=True, exist_ok=True)
        start_dockerd(self.state)
        existing = run("docker", "ps", "-aq", "--filter", f"label={LABEL}").split()
        if existing:
            raise AssertionError(f"a cluster is already up ({len(existing)} containers labelled "
                                 f"{LABEL}): `make cluster-down` removes it")
        run("docker", "network", "create", "--label", LABEL, *NETWORK_ARGS, NETWORK)
        # the project's images build while the node image is made, the nodes start and the
        # swarm forms: neither needs the other until the images are loaded
        with ThreadPoolExecutor(1) as builder:
            log("building the project's images (scripts/images.sh) and the node image")
            project_images = builder.submit(build_project_images)
            build_node_image()
            log("node image ready; starting the nodes")
            with ThreadPoolExecutor(len(NODES)) as pool:
                list(pool.map(self.start_node, NODES))
            self.form_swarm()
            log(f"swarm of {len(NODES)} nodes formed; waiting for the project's images")
            project_images.result()
        log("loading the images into the nodes that run them")
        self.start_client()
        self.load_images()
        log("deploying the stacks")
        self.deploy()
        log("stacks deployed; waiting for every task and route")
        self.wait_deployed()
        log(f"stacks answer after {time.monotonic() - started:.0f} s; starting keepalived")
        self.start_keepalived_all()
        holder = wait_for(self.vip_holder, 60, "a gateway node to hold the VIP")
        log(f"{holder} holds the VIP {VIP}; the cluster is up after "
            f"{time.monotonic() - started:.0f} s")
        (self.state / "up-seconds").write_text(f"{time.monotonic() - started:.1f}\n")

    def node_run_args(self, n: Node) -> list[str]:
        return ["docker", "run", "-d", "--name", n.container, "--hostname", n.hostname,
                "--label", LABEL, "--network", NETWORK, "--ip", n.address,
                # an init that reaps what the node's daemons leave behind (keepalived and the
                # watcher are started by `docker exec`; dockerd would leave them zombies)
                "--init",
                # --privileged is refused on these hosts (no CAP_SYS_RESOURCE to hand out)
                "--cap-add", "ALL", "--cap-drop", "SYS_RESOURCE",
                "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
                "--security-opt", "systempaths=unconfined",
                # cgroup v1: the nested runc needs the tree writable
                "--cgroupns", "host", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw",
                "-v", "/var/lib/docker",  # overlay2 on a volume, not on overlay2
                # as on a machine, /run starts empty at each boot (dockerd's pid file, keepalived's)
                "--tmpfs", "/run",
                # there is no registry: a task starts from the loaded image at once instead of
                # first waiting about 20 s for a registry lookup to time out (swarm's agent
                # pulls a tag before each task start unless told to prefer the local image)
                "--env", "DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1",
                NODE_IMAGE, "dockerd", "--cgroup-parent", f"/{n.container}",
                # the node's own bridges, apart from the host's and from the cluster network
                "--bip", "172.31.254.1/24"]

    def start_node(self, n: Node) -> None:
        run(*self.node_run_args(n))
        self.wait_dockerd(n)

    def wait_dockerd(self, n: Node, timeout: float = 90) -> None:
        wait_for(lambda: self.exec(n, "docker", "info", "--format", "{{.ServerVersion}}",
                                   check=False).strip(), timeout, f"dockerd on {n.name}")

    def start_client(self) -> None:
        """A busybox container on the cluster network: every client runs inside it."""
        run("docker", "run", "-d", "--name", CLIENT, "--hostname", CLIENT, "--label", LABEL,
            "--network", NETWORK, "--ip", CLIENT_ADDRESS, IMAGES["APP_IMAGE"],
            "sleep", "2147483647")

    def load_images(self, nodes: tuple[Node, ...] | list[Node] = NODES) -> None:
        """`docker save | docker load` of the images each node runs (there is no registry)."""
        archives = {image: self.state / f"image-{i}.tar" for i, image in enumerate(IMAGES.values())}
        try:
            for image, archive in archives.items():
                with archive.open("wb") as out:
                    subprocess.run(["docker", "save", image], stdout=out, check=True,
                                   timeout=300)

            def load(n: Node) -> None:
                for image in images_for(n):
                    with archives[image].open("rb") as data:
                        subprocess.run(["docker", "exec", "-i", n.container, "docker", "load",
                                        "-q"], stdin=data, capture_output=True, check=True,
                                       timeout=600)
            with ThreadPoolExecutor(len(nodes)) as pool:
                list(pool.map(load, nodes))
        finally:
            for archive in archives.values():
                archive.unlink(missing_ok=True)

    def form_swarm(self) -> None:
        manager = node("manager")
        self.docker("swarm", "init", "--advertise-addr", manager.address,
                    "--default-addr-pool", ADDRESS_POOL)
        token = self.docker("swarm", "join-token", "-q", "worker").strip()
        for n in NODES:
            if n is not manager:
                self.docker("swarm", "join", "--advertise-addr", n.address, "--token", token,
                            f"{manager.address}:2377", on=n)
        for n in NODES:
            args = [a for label in n.labels for a in ("--label-add", label)]
            self.docker("node", "update", *args, n.hostname)

    def deploy(self) -> None:
        """docs/swarm.md's commands, run on the manager: secrets, then the stacks."""
        from tests.swarm.stacks import deploy_commands, docs_commands

        with tempfile.TemporaryDirectory(prefix=f"{PREFIX}-") as tmp:
            staged = Path(tmp) / "swarm-gateway"
            shutil.copytree(ROOT / "stacks", staged / "stacks")
            unencrypted(staged / "stacks" / "gateway.yml")
            (make,) = docs_commands(r"scripts/demo\.sh certs")
            run(*make.split(), str(staged / DEMO_CERTS))
            self.exec(node("manager"), "mkdir", "-p", REMOTE_ROOT)
            run("docker", "cp", f"{staged}/.", f"{node('manager').container}:{REMOTE_ROOT}")
            shutil.copy(staged / DEMO_CERTS / "demo-ca.crt", self.state / "demo-ca.crt")
        commands = [*docs_commands(rf"docker secret create \S+ {re.escape(DEMO_CERTS)}/\S+"),
                    *docs_commands(r"openssl rand -hex 32 \| docker secret create \S+ -"),
                    *deploy_commands()]
        for command in commands:
            if command.startswith("docker stack deploy "):
                # no registry to ask for the images' digests (every node has them loaded): on
                # the internal network the question would only time out
                command = command.replace("docker stack deploy ",
                                          "docker stack deploy --resolve-image never ", 1)
            self.manager_shell(command)

    def manager_shell(self, command: str) -> str:
        """A documented shell command, run on the manager in a copy of the repository's stacks."""
        from tests.swarm.stacks import NOFILE

        env = [a for k, v in {**IMAGES, **NOFILE}.items() for a in ("-e", f"{k}={v}")]
        return run("docker", "exec", "-w", REMOTE_ROOT, *env, node("manager").container,
                   "sh", "-c", command, timeout=180)

    def wait_deployed(self, timeout: float = 300) -> None:
        """Every service has all its tasks running, and each gateway answers for each Host."""
        def converged() -> bool:
            out = self.docker("service", "ls", "--format", "{{.Name}} {{.Replicas}}")
            pairs = [line.split()[1].split("/") for line in out.splitlines() if line.strip()]
            return bool(pairs) and all(a == b and a != "0" for a, b in pairs)
        try:
            wait_for(converged, timeout, "every service's tasks to run")
            for n in gateway_nodes():
                for host in ("managerhttp", "intrahttp", "dmzhttp"):
                    wait_for(partial(self.routes, n.address, GATEWAY_PORT, host),
                             120, f"the gateway on {n.name} to route {host}")
            wait_for(partial(self.routes, node("dmz").address, DMZ_GATEWAY_PORT, "dmzhttp"),
                     120, "the dmz gateway to route dmzhttp")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.diagnose()}") from None

    # --- keepalived --------------------------------------------------------------------------

    def keepalived_description(self, preempt: bool = True) -> dict[str, Any]:
        """The cluster file of the gateway nodes (keepalived/cluster.example.yaml's shape)."""
        return {
            "instance": "gateway",
            "virtual_router_id": 70,
            "vips": [f"{VIP}/24"],
            "vrrp_version": 3,
            "advert_int": ADVERT_INT,
            "preempt": preempt,
            # the cluster network is internal: the host drops what it would forward outside
            # the network's range, multicast (224.0.0.18) included; adverts go to the peers
            "unicast": True,
            "script_user": "keepalived_script",
            "check": {
                "mode": "track_file",
                "command": "/usr/local/bin/gateway-check",
                # the LOCAL gateway, on its host-mode ports
                "http": [f"http://127.0.0.1:{ADMIN_PORT}/readyz"],
                "tcp": [f"127.0.0.1:{GATEWAY_PORT}"],
                "timeout": 0.5,
                "fall": 1,
                "rise": 2,
                "weight": 0,
                "track_file": TRACK_FILE,
                "watch_interval": 0.1,
            },
            "nodes": [{"name": n.name, "interface": INTERFACE, "address": n.address,
                       "priority": n.priority} for n in gateway_nodes()],
        }

    def start_keepalived_all(self, preempt: bool = True) -> None:
        self.description = self.keepalived_description(preempt)
        (self.state / "keepalived-cluster.yaml").write_text(
            yaml.safe_dump(self.description, sort_keys=False))
        for n in gateway_nodes():
            self.stop_keepalived(n)
        # by priority, each once the one before holds the VIP: the highest becomes master
        # whether or not it preempts
        for n in gateway_nodes():
            self.start_keepalived(n)
            if n is gateway_nodes()[0]:
                wait_for(partial(self.holds_alone, n.name), 60, f"{n.name} to take the VIP")

    def start_keepalived(self, n: Node) -> None:
        """The watcher and keepalived on a gateway node, with the rendered configuration."""
        if not self.description:
            self.description = self.keepalived_description()
        spec = cluster_from_dict(self.description, "the cluster's keepalived description")
        conf = render_node(spec, n.name, source="the cluster's keepalived description")
        self.stop_keepalived(n)
        self.exec(n, "sh", "-c", "cat >/etc/keepalived/keepalived.conf", input=conf)
        watcher = " ".join(["gateway-check", *spec.check.watcher_args(spec.vips)])
        self.exec(n, "sh", "-c", f"mkdir -p {Path(TRACK_FILE).parent} && "
                  f"setsid {watcher} >>/var/log/gateway-check.log 2>&1 &")
        self.exec(n, "sh", "-c", "setsid keepalived --dont-fork --log-console --log-detail "
                  "-f /etc/keepalived/keepalived.conf >>/var/log/keepalived.log 2>&1 &")

    def stop_keepalived(self, n: Node) -> None:
        # [g]: the pattern does not match this shell's own command line
        self.exec(n, "sh", "-c", "pkill -x keepalived; pkill -f '[g]ateway-check --watch'; "
                  "while pgrep -x keepalived >/dev/null; do sleep 0.1; done", check=False)

    def holds_vip(self, n: Node) -> bool:
        out = self.exec(n, "ip", "-o", "-4", "addr", "show", "dev", INTERFACE, check=False)
        return f" {VIP}/" in out

    def vip_holders(self) -> list[str]:
        return [n.name for n in gateway_nodes() if self.running(n) and self.holds_vip(n)]

    def vip_holder(self) -> str | None:
        holders = self.vip_holders()
        return holders[0] if len(holders) == 1 else None

    def holds_alone(self, name: str) -> bool:
        """`name` holds the VIP, and no other gateway node does."""
        return self.vip_holder() == name

    def vrrp_state(self, n: Node) -> str | None:
        """The state keepalived on a node entered last (MASTER, BACKUP, FAULT), from its log."""
        states = re.findall(r"Entering (\w+) STATE", self.keepalived_log(n, 200))
        return states[-1] if states else None

    def keepalived_log(self, n: Node, lines: int = 30) -> str:
        return self.exec(n, "tail", f"-{lines}", "/var/log/keepalived.log", check=False)

    # --- nodes coming and going --------------------------------------------------------------

    def running(self, n: Node) -> bool:
        out = run("docker", "inspect", "-f", "{{.State.Running}}", n.container, check=False)
        return out.strip() == "true"

    def kill_node(self, n: Node) -> None:
        """What a dead machine looks like: the node container and everything in it, SIGKILL."""
        run("docker", "kill", n.container)

    def cut_power(self, n: Node) -> None:
        """A machine that loses its power sends nothing more: its link goes down first, then
        everything on it dies (kill_node alone lets the dying node's kernel refuse and reset
        connections for a moment while its namespace is torn down)."""
        pid = run("docker", "inspect", "-f", "{{.State.Pid}}", n.container).strip()
        run("nsenter", "-t", pid, "-n", "ip", "link", "set", INTERFACE, "down")
        self.kill_node(n)

    def kill_gateway(self, n: Node, service: str = "http-gateway") -> None:
        """What a crashed gateway looks like: its container on that node, SIGKILL; swarm starts
        a new one (restart_policy: any)."""
        container = self.gateway_container(n, service)
        if container is None:
            raise AssertionError(f"no {service} container runs on {n.name}")
        self.docker("kill", container, on=n)

    def restart_node(self, n: Node) -> None:
        """The node boots again: its dockerd rejoins the swarm (its state is on its volume)."""
        run("docker", "start", n.container)
        self.wait_dockerd(n)

    def still_listing(self, n: Node) -> list[str]:
        """The running nodes whose gossip still lists `n` as a peer of the ingress network, which
        every node joins (`docker network inspect --verbose` on each)."""
        def lists(other: Node) -> bool:
            out = self.docker("network", "inspect", "--verbose", "--format",
                              "{{json .Peers}}", "ingress", on=other)
            return n.address in {peer["IP"] for peer in json.loads(out) or []}
        others = [o for o in NODES if o is not n and self.running(o)]
        with ThreadPoolExecutor(len(others)) as pool:
            return [o.name for o, listed in zip(others, pool.map(lists, others), strict=True)
                    if listed]

    def wait_forgotten(self, n: Node, timeout: float = 60) -> float:
        """Wait until the gossip of every other node has dropped a dead node (about 6 s after
        the kill here): a machine takes longer than that to boot again. A node restarted sooner
        meets its previous incarnation still listed ("is the new incarnation of the active
        node", then "unknown to memberlist" in its dockerd's log), and its gateway answered only
        35 - 60 s after the node came back instead of about 5 s (4 of 5 node trials of one run).
        Even after this wait (or one until the manager marks the node down) about one restart
        in nine here still waits 30 s for NetworkDB's bulk sync with one peer ("Bulk sync to
        node ... timed out"): the gateway's task starts late, which the trials report as a slow
        return. Seconds waited."""
        started = time.monotonic()
        wait_for(lambda: not self.still_listing(n), timeout,
                 f"the swarm's gossip to drop {n.name}", interval=0.2)
        return time.monotonic() - started

    def node_state(self, n: Node) -> str:
        """What the manager says of a node: ready / down / unknown."""
        return self.docker("node", "inspect", "-f", "{{.Status.State}}", n.hostname,
                           check=False).strip()

    # --- services and tasks ------------------------------------------------------------------

    def tasks(self, service: str) -> list[dict[str, str]]:
        """The running tasks of a service: node, container id (= the task's hostname), address."""
        name = SERVICES.get(service, service)
        ids = self.docker("service", "ps", "-q", "--filter", "desired-state=running",
                          name).split()
        if not ids:
            return []
        out = self.docker("inspect", "-f", "{{json .}}", *ids)
        found = []
        nodes = self.node_names()
        for line in out.splitlines():
            task = json.loads(line)
            if task["Status"]["State"] != "running":
                continue
            addresses = [a.split("/")[0] for att in task.get("NetworksAttachments") or []
                         for a in att.get("Addresses") or []]
            container = (task["Status"].get("ContainerStatus") or {}).get("ContainerID", "")
            found.append({"node": nodes.get(task["NodeID"], task["NodeID"]),
                          "container": container[:12], "addresses": " ".join(addresses)})
        return found

    def node_names(self) -> dict[str, str]:
        """{swarm node ID: the cluster's name of the node}."""
        names = {n.hostname: n.name for n in NODES}
        out = self.docker("node", "ls", "--format", "{{.ID}} {{.Hostname}}")
        return {node_id: names.get(host, host)
                for node_id, host in (line.split() for line in out.splitlines() if line.strip())}

    def task_hostnames(self, service: str) -> set[str]:
        return {t["container"] for t in self.tasks(service)}

    def gateway_container(self, n: Node, service: str = "http-gateway") -> str | None:
        out = self.docker("ps", "-q", "--filter",
                          f"label=com.docker.swarm.service.name={SERVICES[service]}", on=n,
                          check=False).split()
        return out[0] if out else None

    def diagnose(self) -> str:
        services = self.docker("service", "ls", "--format", "{{.Name}}", check=False).split()
        report = [self.docker("service", "ps", "--no-trunc", "--format",
                              "{{.Name}} {{.Node}} {{.DesiredState}} {{.CurrentState}} {{.Error}}",
                              *services, check=False)]
        for n in gateway_nodes():
            report.append(f"--- keepalived on {n.name}\n{self.keepalived_log(n, 15)}")
        return "\n".join(report)

    # --- the client --------------------------------------------------------------------------

    def client_pid(self) -> int:
        return int(run("docker", "inspect", "-f", "{{.State.Pid}}", CLIENT).strip())

    def client_namespace(self) -> Namespace:
        """The client container's network namespace, for sockets opened by this process (a
        thread of its own enters it)."""
        if self._client is None:
            self._client = Namespace(CLIENT, path=f"/proc/{self.client_pid()}/ns/net")
        return self._client

    def client_get(self, address: str, port: int, host: str, path: str = "/",
                   headers: str = "", target: str | None = None,
                   timeout: float = 3) -> tuple[int, str]:
        """One HTTP/1.0 request from the client container's namespace: status and body (0 and
        "" when nothing answered)."""
        request = (f"GET {target or path} HTTP/1.0\r\nHost: {host}\r\n{headers}"
                   "Connection: close\r\n\r\n").encode()
        return self.client_namespace().call(_exchange, address, port, request, timeout)

    def routes(self, address: str, port: int, host: str) -> bool:
        """The gateway at `address:port` answers `host` with a 200."""
        return self.client_get(address, port, host)[0] == 200

    # --- taking it down ----------------------------------------------------------------------

    def down(self, images: bool = False) -> None:
        if not docker_answers():
            log("dockerd does not answer: nothing to remove")
            return
        containers = run("docker", "ps", "-aq", "--filter", f"label={LABEL}").split()
        if containers:
            # -v: the nodes' /var/lib/docker volumes go with them
            run("docker", "rm", "-f", "-v", *containers, timeout=300)
            log(f"removed {len(containers)} containers (the nodes and the client)")
        networks = run("docker", "network", "ls", "-q", "--filter", f"label={LABEL}").split()
        if networks:
            run("docker", "network", "rm", *networks)
        if images:
            for image in (NODE_IMAGE, NODE_BASE_IMAGE, *IMAGES.values()):
                if have_image(image):
                    run("docker", "image", "rm", image, check=False)
                    log(f"removed {image}")
        elif have_image(NODE_IMAGE):
            run("docker", "image", "rm", NODE_IMAGE, *IMAGES.values(), check=False)
        stop_dockerd(self.state)


# --- failover, measured ------------------------------------------------------------------------

# numbers worth reading after the run (the tests print them in the terminal summary)
measured = Measurements("cluster measurements")


def try_these() -> str:
    gw1, dmz = node("gw1"), node("dmz")
    get = "docker exec gwcluster-client wget -qO- --header"
    return "\n".join([
        "Try (every client runs in the container gwcluster-client, on the cluster network):",
        f"  {get} 'Host: managerhttp' http://{VIP}:8080/",
        "      a managerhttp task (on the manager node) answers, through the VIP",
        f"  {get} 'Host: intrahttp' http://{gw1.address}:8080/",
        "      gw1 routes to a task on an intra node, over the overlay",
        f"  {get} 'Host: intrahttp' http://{dmz.address}:8081/",
        "      404: the dmz gateway has no way to intra",
        "  docker exec gwcluster-manager docker node ls      the six nodes and their roles",
        "  docker exec gwcluster-manager docker service ps gateway_http-gateway",
        "  docker exec gwcluster-gw1 ip -4 addr show eth0    the VIP on the master",
        "  docker kill gwcluster-gw1                         the VIP moves to gw2 within a second",
        "  .venv/bin/python -m tests.support.cluster status  the VIP's holder, the tasks' nodes",
        "Real swarms have IPVS and IPsec, this kernel has neither: service virtual IPs and the",
        "ingress mesh do not work on these nodes (the gateways route to task addresses, as",
        "everywhere), and the control networks are deployed unencrypted here.",
        "make cluster-down removes all of it.",
    ])


def status(cluster: Cluster) -> str:
    lines = [f"VIP {VIP}: held by {', '.join(cluster.vip_holders()) or 'no node'}"]
    lines.append(cluster.docker("node", "ls", "--format",
                                "{{.Hostname}} {{.Status}} {{.Availability}} {{.ManagerStatus}}",
                                check=False))
    for service in SERVICES:
        tasks = cluster.tasks(service)
        lines.append(f"{service}: " + ", ".join(f"{t['container']} on {t['node']}"
                                                for t in tasks))
    return "\n".join(lines)


@contextlib.contextmanager
def started(state: Path) -> Iterator[Cluster]:
    """A cluster for the length of a `with`: up, then down whatever happened."""
    cluster = Cluster(state)
    try:
        cluster.up()
        yield cluster
    finally:
        cluster.down()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.cluster",
                                     description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--state", default=str(ROOT / ".work/cluster"),
                        help="where `up` remembers what it made (default .work/cluster)")
    parser.add_argument("--images", action="store_true",
                        help="down: also remove the images, the cached node base included")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("cluster: needs root (dockerd, the nodes' network)", file=sys.stderr)
        return 1
    cluster = Cluster(Path(args.state))
    try:
        if args.command == "up":
            cluster.up()
            print(try_these())
        elif args.command == "down":
            cluster.down(images=args.images)
        else:
            print(status(cluster))
    except AssertionError as exc:
        print(f"cluster: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
