"""The probes: `--http URL`, `--tcp HOST:PORT`, `--docker-service NAME`. Standard library only
(json, ssl and urllib's quote are imported by the rarely used paths that need them)."""

from __future__ import annotations

import socket

from agent.check.base import BadAnswer, Check, CheckFailed, Draining, remaining
from agent.check.http import connect, http_exchange

# what the gateway's /readyz answers while it drains (agent/gateway/admin.py says the same)
DRAINING_STATUS, DRAINING_REASON = 503, "Draining"


def split_url(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, target) of `http://HOST[:PORT]/PATH?QUERY` or https; IPv6
    literals in brackets. Raises ValueError with the message the command line shows."""
    error = ValueError(f"--http {url!r}: expected http://HOST[:PORT]/PATH or https://...")
    if not url.isascii() or any(c <= " " or c == "\x7f" for c in url):
        raise error  # nothing that could split the request line or a header
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in ("http", "https"):
        raise error
    rest = rest.partition("#")[0]
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    netloc, target = rest[:cut], rest[cut:]
    if target.startswith("?"):
        target = "/" + target
    hostport = netloc.rpartition("@")[2]
    if hostport.startswith("["):
        host, bracket, after = hostport[1:].partition("]")
        if not bracket or ":" not in host or (after and not after.startswith(":")):
            raise error
        port_text = after[1:]
    else:
        host, _, port_text = hostport.partition(":")
        if ":" in port_text:
            raise error
    default = 443 if scheme == "https" else 80
    if port_text and not (port_text.isdigit() and 0 < int(port_text) < 65536):
        raise error
    if not host:
        raise error
    return scheme, host.lower(), int(port_text) if port_text else default, target or "/"


def http_check(url: str) -> Check:
    scheme, host, port, target = split_url(url)
    shown = f"[{host}]" if ":" in host else host
    host_header = shown if port == (443 if scheme == "https" else 80) else f"{shown}:{port}"

    def run(deadline: float) -> None:
        sock = connect(host, port, deadline)
        try:
            if scheme == "https":
                import ssl  # only when asked for: it costs more to import than all the rest

                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
            status, reason, _ = http_exchange(sock, host_header, target, deadline)
        finally:
            sock.close()
        if status == DRAINING_STATUS and reason == DRAINING_REASON:
            raise Draining(f"HTTP {status} {reason}")
        if not 200 <= status < 300:
            raise CheckFailed(f"HTTP {status} {reason}".rstrip())

    return Check(f"http {url}", run)


def parse_host_port(value: str) -> tuple[str, int]:
    """`HOST:PORT` or `[V6]:PORT`."""
    host, sep, port_text = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"--tcp {value!r}: expected HOST:PORT")
    return host, int(port_text)


def tcp_check(value: str) -> Check:
    host, port = parse_host_port(value)

    def run(deadline: float) -> None:
        connect(host, port, deadline).close()

    return Check(f"tcp {value}", run)


def _docker_get(socket_path: str, path: str, deadline: float) -> object:
    import json

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(remaining(deadline))
        try:
            sock.connect(socket_path)
        except FileNotFoundError:
            raise CheckFailed(f"no Docker socket at {socket_path}") from None
        except PermissionError:
            raise CheckFailed(
                f"permission denied on {socket_path} (is the check's user in the docker group?)"
            ) from None
        status, _, body = http_exchange(sock, "localhost", path, deadline, want_body=True)
    finally:
        sock.close()
    if status != 200:
        raise CheckFailed(f"Docker answered {path.split('?')[0]} with HTTP {status}")
    try:
        return json.loads(body)
    except ValueError as exc:
        raise BadAnswer(f"Docker's answer to {path.split('?')[0]} is not JSON: {exc}") from None


def _task_problem(container: dict[str, object]) -> str | None:
    """Why a running container of the service cannot count as serving, or None if it can."""
    status = str(container.get("Status", ""))
    if "(unhealthy)" in status:
        return "unhealthy"
    if "(health: starting)" in status:
        return "health check still starting"
    return None


def docker_service_check(service: str, socket_path: str) -> Check:
    def run(deadline: float) -> None:
        import json
        from urllib.parse import quote

        info = _docker_get(socket_path, "/info", deadline)
        swarm = info.get("Swarm", {}) if isinstance(info, dict) else {}
        node_id = swarm.get("NodeID") if isinstance(swarm, dict) else None
        if not node_id or swarm.get("LocalNodeState") != "active":
            state = swarm.get("LocalNodeState", "unknown") if isinstance(swarm, dict) else "?"
            raise CheckFailed(f"this Docker engine is not an active swarm node (state {state})")
        # The local engine lists only local containers; the node label makes "on THIS node"
        # explicit and works on workers, where the /tasks endpoint is refused.
        filters = json.dumps(
            {
                "label": [
                    f"com.docker.swarm.service.name={service}",
                    f"com.docker.swarm.node.id={node_id}",
                ],
                "status": ["running"],
            }
        )
        containers = _docker_get(
            socket_path, f"/containers/json?filters={quote(filters)}", deadline
        )
        if not isinstance(containers, list) or not containers:
            raise CheckFailed(f"no running task on this node ({node_id[:12]})")
        problems = [_task_problem(c) for c in containers if isinstance(c, dict)]
        if all(problems):
            reasons = ", ".join(map(str, problems))
            raise CheckFailed(f"its tasks on this node are not ready: {reasons}")

    return Check(f"docker service {service}", run)

