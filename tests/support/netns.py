"""A keepalived cluster in network namespaces: real VRRP, real nginx, a client doing real HTTP.

    switch namespace:  bridge br0 (in its own namespace: the root namespace's iptables FORWARD
                       policy, DROP where dockerd runs, would eat the VRRP adverts)
    node namespaces:   eth0 10.213.0.11, .12, ... ; nginx on :80 answering with the node's name;
                       keepalived with the configuration `agent.keepalived.render` writes; in
                       track_file mode the `gateway-check --watch` watcher
    client namespace:  eth0 10.213.0.2; requests to the VIP 10.213.0.100

Every address lives inside these namespaces. `Cluster` is a context manager: leaving it (also by
an exception) stops every process it started, kills whatever else still runs in its namespaces
and deletes them (which removes their veths). Namespaces left behind by a process that was
killed outright are swept the next time a Cluster is set up. Needs root, `ip`, nginx, keepalived.

The benchmark reuses it (see tests/support/failover.py):

    with Cluster(size=3) as cluster:
        cluster.start(cluster.description(mode="track_file"))
        cluster.wait_for_answer("node1")
        cluster.kill_nginx(cluster.nodes[0])
        cluster.wait_for_answer("node2")
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from agent.keepalived.render import Cluster as ClusterSpec
from agent.keepalived.render import cluster_from_dict, render_node

T = TypeVar("T")

PREFIX = "gwt"
SUBNET = "10.213.0"
VIP = f"{SUBNET}.100"
CLIENT_ADDRESS = f"{SUBNET}.2"
INTERFACE = "eth0"
CLONE_NEWNET = 0x40000000
_STALE = re.compile(rf"^{PREFIX}(\d+)x\d+-")
_counter = itertools.count()
_libc = ctypes.CDLL(None, use_errno=True)


def run(argv: list[str], check: bool = True,
        timeout: float = 30) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): "
                           f"{result.stderr.strip() or result.stdout.strip()}")
    return result


def venv_program(name: str) -> str:
    """A console script of this environment (gateway-check), found beside the interpreter."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} is not installed in this environment (pip install -e .)")
    return found


def _kill_group(proc: subprocess.Popen[bytes], grace: float = 3.0) -> None:
    """SIGTERM the process group `proc` leads, then SIGKILL whatever is left."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)  # SIGKILL is quick; reap it


class Namespace:
    """One network namespace, and a thread that lives inside it for in-process sockets."""

    def __init__(self, name: str, path: str | None = None) -> None:
        self.name = name
        # a named namespace (ip netns), or another one by path: a container's /proc/PID/ns/net
        self.path = path or f"/run/netns/{name}"
        self._executor: ThreadPoolExecutor | None = None

    def create(self) -> None:
        run(["ip", "netns", "add", self.name])
        run(["ip", "-n", self.name, "link", "set", "lo", "up"])

    def argv(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, argv: list[str], check: bool = True,
            timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return run(self.argv(argv), check=check, timeout=timeout)

    def popen(self, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            return subprocess.Popen(self.argv(argv), stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)

    def _enter(self) -> None:
        fd = os.open(self.path, os.O_RDONLY)
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns({self.name}): {os.strerror(err)}")
        finally:
            os.close(fd)

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Run `fn` in this namespace's own thread: sockets it opens belong to the namespace."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix=self.name,
                                                initializer=self._enter)
        return self._executor.submit(fn, *args)

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        return self.submit(fn, *args).result()

    def close(self) -> None:
        """Let this process's thread in the namespace go (the namespace stays)."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    def addresses(self, device: str = INTERFACE) -> list[str]:
        out = run(["ip", "-n", self.name, "-o", "-4", "addr", "show", "dev", device],
                  check=False).stdout
        return re.findall(r"inet (\S+?)/", out)

    def pids(self) -> list[int]:
        out = run(["ip", "netns", "pids", self.name], check=False).stdout
        return [int(p) for p in out.split()]

    def delete(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        for _ in range(3):
            pids = self.pids()
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
        run(["ip", "netns", "del", self.name], check=False)


def unique_name(role: str) -> str:
    """A namespace name that sweep_stale() removes once this process is gone."""
    return f"{PREFIX}{os.getpid()}x{next(_counter)}-{role}"


def sweep_stale() -> None:
    """Delete the namespaces and files a killed test run left behind (its pid is gone)."""
    for line in run(["ip", "netns", "list"], check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        match = _STALE.match(name)
        if match and not Path(f"/proc/{match.group(1)}").exists():
            Namespace(name).delete()
    for folder in Path(tempfile.gettempdir()).glob(f"{PREFIX}*-files"):
        match = _STALE.match(folder.name)
        if match and not Path(f"/proc/{match.group(1)}").exists():
            shutil.rmtree(folder, ignore_errors=True)


def http_get(host: str, port: int = 80, path: str = "/", timeout: float = 0.5) -> str | None:
    """The body of a plain HTTP/1.0 GET, stripped, or None if there was no 200 answer."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
            chunks = []
            while chunk := sock.recv(4096):
                chunks.append(chunk)
    except OSError:
        return None
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200") and not head.startswith(b"HTTP/1.0 200"):
        return None
    return body.decode(errors="replace").strip()


NGINX_CONF = """\
daemon off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 512; }}
http {{
    access_log off;
    client_body_temp_path {dir}/tmp;
    proxy_temp_path {dir}/tmp;
    server {{
        listen 80 default_server;
        location / {{
            default_type text/plain;
            return 200 "{name}\\n";
        }}
    }}
}}
"""


@dataclass
class Node:
    name: str
    ns: Namespace
    address: str
    priority: int
    dir: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    hang: socket.socket | None = None

    def log(self, what: str) -> Path:
        return self.dir / f"{what}.log"


class Cluster:
    """N node namespaces, a switch and a client; see the module's docstring."""

    def __init__(self, size: int = 3, priorities: list[int] | None = None,
                 keep_workdir: bool = False) -> None:
        if size < 2:
            raise ValueError("a VRRP cluster needs at least two nodes")
        self.size = size
        self.priorities = priorities or [250 - 10 * i for i in range(size)]
        self.keep_workdir = keep_workdir
        self.tag = unique_name("")[:-1]
        self.namespaces: list[Namespace] = []
        self.nodes: list[Node] = []
        self.workdir = Path(tempfile.gettempdir()) / f"{self.tag}-files"
        self.switch = Namespace(f"{self.tag}-sw")
        self.client = Namespace(f"{self.tag}-client")
        self.spec: ClusterSpec | None = None

    # --- lifecycle ----------------------------------------------------------------------------

    def __enter__(self) -> Cluster:
        try:
            self.setup()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _namespace(self, ns: Namespace) -> Namespace:
        self.namespaces.append(ns)  # recorded first: close() deletes even a half-made one
        ns.create()
        return ns

    def _plug(self, ns: Namespace, port: str, address: str) -> None:
        """A veth from the switch's bridge to `ns`, created inside the namespaces only."""
        run(["ip", "-n", self.switch.name, "link", "add", port, "type", "veth",
             "peer", "name", INTERFACE, "netns", ns.name])
        run(["ip", "-n", self.switch.name, "link", "set", port, "master", "br0", "up"])
        run(["ip", "-n", ns.name, "addr", "add", f"{address}/24", "dev", INTERFACE])
        run(["ip", "-n", ns.name, "link", "set", INTERFACE, "up"])

    def setup(self) -> None:
        sweep_stale()
        # readable by all: the script user may be unprivileged
        self.workdir.mkdir(mode=0o755)
        self._namespace(self.switch)
        run(["ip", "-n", self.switch.name, "link", "add", "br0", "type", "bridge",
             "mcast_snooping", "0"])
        run(["ip", "-n", self.switch.name, "link", "set", "br0", "up"])
        for index in range(self.size):
            name = f"node{index + 1}"
            ns = self._namespace(Namespace(f"{self.tag}-n{index + 1}"))
            address = f"{SUBNET}.{11 + index}"
            self._plug(ns, f"n{index + 1}", address)
            folder = self.workdir / name
            (folder / "tmp").mkdir(parents=True)
            (folder / "metrics").mkdir()
            os.chmod(folder, 0o755)
            os.chmod(folder / "metrics", 0o777)  # the notify hook runs as the script user
            self.nodes.append(Node(name, ns, address, self.priorities[index], folder))
        self._namespace(self.client)
        self._plug(self.client, "c", CLIENT_ADDRESS)
        # keepalived runs a script by its real path (symlinks resolved), so a venv's bin/python
        # would start without the venv: the notify hook goes through a tiny wrapper instead
        notify = self.workdir / "notify"
        notify.write_text(f'#!/bin/sh\nexec {sys.executable} -m agent.keepalived notify "$@"\n')
        os.chmod(notify, 0o755)

    def close(self) -> None:
        procs = [p for node in self.nodes for p in node.procs.values()]
        for proc in procs:  # all at once: keepalived takes a moment to say goodbye
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 2
        for proc in procs:
            _kill_group(proc, grace=max(0.0, deadline - time.monotonic()))
        for node in self.nodes:
            node.procs.clear()
            if node.hang is not None:
                node.hang.close()
                node.hang = None
        for ns in reversed(self.namespaces):
            ns.delete()
        self.namespaces.clear()
        if not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # --- configuration ------------------------------------------------------------------------

    def description(self, mode: str = "script", **overrides: Any) -> dict[str, Any]:
        """A cluster file (as a dict) for these nodes; `overrides` replace top-level keys, and
        `check` entries are merged into the check section."""
        check: dict[str, Any] = {
            "mode": mode,
            "command": venv_program("gateway-check"),
            "http": ["http://127.0.0.1:80/"],
            "timeout": 0.5,
            "interval": 1,
            "fall": 1,
            "rise": 1,
            "weight": 0,
            "track_file": f"{self.workdir}/{{node}}/state",
            "watch_interval": 0.1,
        }
        check.update(overrides.pop("check", {}))
        description: dict[str, Any] = {
            "instance": "gateway",
            "virtual_router_id": 51,
            "vips": [f"{VIP}/24"],
            "vrrp_version": 3,
            "advert_int": 1,
            "preempt": True,
            "script_user": "root",
            "notify": f"{self.workdir}/notify "
                      f"--textfile {self.workdir}/{{node}}/metrics/keepalived.prom",
            "check": check,
            "nodes": [{"name": n.name, "interface": INTERFACE, "address": n.address,
                       "priority": n.priority} for n in self.nodes],
        }
        description.update(overrides)
        return description

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def render(self, description: dict[str, Any]) -> dict[str, Path]:
        """Render every node's keepalived.conf into its folder; {node name: path}."""
        self.spec = cluster_from_dict(description)
        paths = {}
        for node in self.nodes:
            path = node.dir / "keepalived.conf"
            path.write_text(render_node(self.spec, node.name, source="the test cluster"))
            paths[node.name] = path
        return paths

    # --- processes ----------------------------------------------------------------------------

    def start(self, description: dict[str, Any]) -> None:
        """nginx, the watcher (track_file mode) and keepalived on every node."""
        self.render(description)
        for node in self.nodes:
            self.start_nginx(node)
            if self.spec is not None and self.spec.check.mode == "track_file":
                self.start_watcher(node)
            self.start_keepalived(node)

    def _spawn(self, node: Node, what: str, argv: list[str]) -> None:
        old = node.procs.pop(what, None)
        if old is not None:
            _kill_group(old)
        node.procs[what] = node.ns.popen(argv, node.log(what))

    def start_nginx(self, node: Node) -> None:
        conf = node.dir / "nginx.conf"
        conf.write_text(NGINX_CONF.format(dir=node.dir, name=node.name))
        self._spawn(node, "nginx", ["nginx", "-p", str(node.dir), "-c", str(conf),
                                    "-e", str(node.dir / "nginx-error.log")])
        from tests.support import wait_until

        wait_until(lambda: node.ns.call(http_get, "127.0.0.1") == node.name, 10,
                   f"nginx on {node.name}")

    def kill_nginx(self, node: Node) -> None:
        """What a crashed gateway looks like: the whole nginx process group, SIGKILL. Returns
        once no process of the group is left (the workers hold the listening socket too)."""
        proc = node.procs.pop("nginx")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.01)

    def hang_http(self, node: Node) -> None:
        """Replace nginx by a listener that accepts connections and never answers."""
        if "nginx" in node.procs:
            self.kill_nginx(node)

        def listen() -> socket.socket:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("0.0.0.0", 80))
            sock.listen(512)  # the kernel completes handshakes; nobody ever reads
            return sock

        node.hang = node.ns.call(listen)

    def unhang_http(self, node: Node) -> None:
        if node.hang is not None:
            node.hang.close()
            node.hang = None

    def start_watcher(self, node: Node) -> None:
        assert self.spec is not None
        args = [part.replace("{node}", node.name) for part in self.spec.check.watcher_args()]
        self._spawn(node, "watcher", [sys.executable, "-m", "agent.check", *args])

    def start_keepalived(self, node: Node) -> None:
        self._spawn(node, "keepalived", [
            "keepalived", "--dont-fork", "--log-console", "--log-detail", "--vrrp",
            "--no-syslog", "--use-file", str(node.dir / "keepalived.conf"),
            "--pid", str(node.dir / "keepalived.pid"),
            "--vrrp_pid", str(node.dir / "vrrp.pid"),
        ])

    def stop(self, node: Node, what: str) -> None:
        """Stop one of the node's processes ("nginx", "keepalived", "watcher") with SIGTERM."""
        _kill_group(node.procs.pop(what))

    # --- what a user sees ---------------------------------------------------------------------

    def answer(self, timeout: float = 0.5) -> str | None:
        """Which node answers on the VIP, asked from the client namespace (None: nobody)."""
        return self.client.call(http_get, VIP, 80, "/", timeout)

    def wait_for_answer(self, name: str, timeout: float = 15) -> None:
        from tests.support import wait_until

        wait_until(lambda: self.answer() == name, timeout,
                   f"{name} to answer on the VIP (holders: {self.holders()})")

    def holders(self) -> list[str]:
        """Nodes that have the VIP on their interface."""
        return [n.name for n in self.nodes if VIP in n.ns.addresses()]

    def logs(self, lines: int = 30) -> str:
        """The tail of every node's logs, for a failing assertion's message."""
        out = []
        for node in self.nodes:
            for log in sorted(node.dir.glob("*.log")):
                text = log.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"--- {node.name} {log.name}\n" + "\n".join(text))
        return "\n".join(out)


@contextlib.contextmanager
def cluster(size: int = 3, **kwargs: Any) -> Iterator[Cluster]:
    with Cluster(size, **kwargs) as made:
        yield made


def keepalived_config_test(ns: Namespace, path: Path) -> str | None:
    """None if `keepalived -t` accepts the file inside `ns` (whose interfaces it checks), else
    what keepalived said.

    keepalived 2.2.7 ends `-t` by sending itself SIGTERM when scripts run as a user other than
    root (fixed in 2.2.8), after reporting any problem; so "killed by SIGTERM, nothing said"
    counts as accepted, and anything said counts as a rejection.
    """
    result = ns.run(["keepalived", "--config-test", "--use-file", str(path)], check=False)
    said = (result.stdout + result.stderr).strip()
    if result.returncode in (0, -signal.SIGTERM) and not said:
        return None
    return f"exit {result.returncode}: {said}"
