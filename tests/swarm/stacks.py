"""What the swarm tests ask of the deployed stacks: commands, requests, task hostnames, numbers."""

from __future__ import annotations

import http.client
import os
import re
import resource
import socket
import ssl
import subprocess
import time
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support import Measurements, wait_until
from tests.support.gateway import http_get

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "swarm.md"
# the images the tests build, removed at the end; the stacks read these names from the environment
IMAGES = {
    "GATEWAY_IMAGE": "swarm-gateway/http-gateway:swarm-test",
    "APP_IMAGE": "swarm-gateway/hostname-httpd:swarm-test",
}
# the gateways' `ulimits: nofile` (stacks/gateway.yml): no more than dockerd's own hard limit,
# which a container here cannot raise (20,000 on these machines)
NOFILE = {"GATEWAY_NOFILE": str(min(65536, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))}
STACKS = ("gateway", "controller", "manager", "intra", "dmz")
GATEWAY_PORT, ADMIN_PORT, DMZ_GATEWAY_PORT = 8080, 9180, 8081
HTTPS_PORT, DMZ_HTTPS_PORT = 443, 8444
# where docs/swarm.md makes the demo's certificates (`scripts/demo.sh certs`); tests use their own
DEMO_CERTS = ".work/demo/certs"

# numbers worth reading after the run (printed in the terminal summary)
measured = Measurements("swarm measurements")


def run(*args: str, check: bool = True, timeout: float = 300) -> str:
    """Run a command with the test images in the environment; its stdout."""
    env = {**os.environ, **IMAGES, **NOFILE}
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {proc.returncode}:\n"
                             f"{proc.stdout}{proc.stderr}")
    return proc.stdout


def docs_commands(pattern: str) -> list[str]:
    """The shell commands of docs/swarm.md's code blocks that match `pattern`, in order."""
    blocks = re.findall(r"```sh\n(.*?)```", DOCS.read_text(encoding="utf-8"), re.S)
    lines = [line.split("  #")[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if re.fullmatch(pattern, line)]


def deploy_commands() -> list[str]:
    """The documented deploy commands of the gateway and application stacks."""
    cmds = docs_commands(r"docker stack deploy -c stacks/\S+\.yml \S+")
    return [c for c in cmds if "gateway-ingress" not in c]


def stack_secrets() -> list[str]:
    """The secrets the gateway stacks mount, made before they are deployed (`external`)."""
    names: set[str] = set()
    for stack in ("gateway", "gateway-ingress"):
        spec = yaml.safe_load((ROOT / "stacks" / f"{stack}.yml").read_text(encoding="utf-8"))
        names |= {name for name, secret in spec.get("secrets", {}).items()
                  if secret.get("external")}
    return sorted(names)


def create_secrets(certs: Path) -> None:
    """What docs/swarm.md does before deploying, with `certs` for its folder: the demo's CA and
    certificate (by `scripts/demo.sh certs`, as `make demo` makes them), then the secrets."""
    (make,) = docs_commands(r"scripts/demo\.sh certs")
    run(*make.split(), str(certs))
    for command in docs_commands(rf"docker secret create \S+ {re.escape(DEMO_CERTS)}/\S+"):
        run(*command.replace(f"{DEMO_CERTS}/", f"{certs}/").split())
    for token in docs_commands(r"openssl rand -hex 32 \| docker secret create \S+ -"):
        run("sh", "-c", token)


class Swarm:
    """The deployed stacks, and what a test asks of them; `certs` holds the demo CA's files."""

    def __init__(self, certs: Path | None = None) -> None:
        self.certs = certs

    def service(self, name: str) -> str:
        """A service's full name: managerhttp -> manager_managerhttp (a service made outside
        the stacks keeps its name)."""
        return {"managerhttp": "manager_managerhttp", "intrahttp": "intra_intrahttp",
                "dmzhttp": "dmz_dmzhttp", "http-gateway": "gateway_http-gateway",
                "dmz-gateway": "gateway_dmz-gateway",
                "gateway-controller": "controller_gateway-controller",
                "docker-proxy": "controller_docker-proxy"}.get(name, name)

    def containers(self, service: str) -> set[str]:
        """The service's started tasks that swarm wants running, by container short id (= the
        task's hostname). A task being stopped is not one of them, though its container may still
        be up for its grace period; a task waiting for its first health check ("starting") is."""
        tasks = run("docker", "service", "ps", "-q", "--filter", "desired-state=running",
                    self.service(service)).split()
        if not tasks:
            return set()
        out = run("docker", "inspect", "-f",
                  "{{.Status.State}} {{.Status.ContainerStatus.ContainerID}}", *tasks)
        # (a task swarm has only assigned has no container yet: its line holds the state alone)
        return {fields[1][:12] for fields in (line.split() for line in out.splitlines())
                if len(fields) == 2 and fields[0] in ("starting", "running")}

    def healthy(self, service: str) -> set[str]:
        """Containers of the service whose HEALTHCHECK passes."""
        out = run("docker", "ps", "--filter", "health=healthy", "--filter",
                  f"label=com.docker.swarm.service.name={self.service(service)}",
                  "--format", "{{.ID}}")
        return {cid[:12] for cid in out.split()}

    def ip_addresses(self, service: str) -> set[str]:
        addresses: set[str] = set()
        for cid in self.containers(service):
            out = run("docker", "inspect", "-f",
                      "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}", cid)
            addresses.update(out.split())
        return addresses

    def diagnose(self) -> str:
        """What swarm says of the stacks' tasks, and the gateways' last log lines."""
        services = run("docker", "service", "ls", "--format", "{{.Name}}", check=False).split()
        report = [run("docker", "service", "ps", "--no-trunc", "--format",
                      "{{.Name}} {{.DesiredState}} {{.CurrentState}} {{.Error}}", *services,
                      check=False)]
        for gateway in ("http-gateway", "dmz-gateway"):
            report.append(f"--- {gateway} log\n{self.logs(gateway, '--tail', '20')}")
        return "\n".join(report)

    def logs(self, service: str, *options: str) -> str:
        """A service's log, its tasks' stdout and stderr together (`docker service logs`)."""
        proc = subprocess.run(["docker", "service", "logs", *options, self.service(service)],
                              capture_output=True, text=True, timeout=60, check=False)
        return proc.stdout + proc.stderr

    def scale(self, service: str, replicas: int) -> None:
        run("docker", "service", "scale", "--detach", f"{self.service(service)}={replicas}")

    def get(self, host: str | None, port: int = GATEWAY_PORT, path: str = "/",
            timeout: float = 5.0) -> tuple[int, str]:
        status, body, _ = http_get(port, host, path, timeout=timeout)
        return status, body.strip()

    def tls_context(self) -> ssl.SSLContext:
        """A client that trusts the demo CA only, and checks host names."""
        assert self.certs is not None, "Swarm(certs) names the demo CA's folder"
        return ssl.create_default_context(cafile=self.certs / "demo-ca.crt")

    def tls_connect(self, sni: str | None, port: int = HTTPS_PORT,
                    context: ssl.SSLContext | None = None) -> ssl.SSLSocket:
        """A TLS connection to 127.0.0.1:port naming `sni` (curl's --resolve SNI:PORT:127.0.0.1);
        raises ssl.SSLError when the handshake or the verification fails."""
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        try:
            return (context or self.tls_context()).wrap_socket(sock, server_hostname=sni)
        except BaseException:
            sock.close()
            raise

    def https_get(self, host: str, port: int = HTTPS_PORT, path: str = "/",
                  sni: str | None = None, context: ssl.SSLContext | None = None,
                  ) -> tuple[int, str, bytes]:
        """GET over a new TLS connection made for `sni` (default: `host`) by a client that
        trusts the demo CA only (or `context`): (status, body, the certificate served, DER)."""
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.sock = tls = self.tls_connect(sni or host, port, context)
        try:
            conn.putrequest("GET", path, skip_host=True)
            conn.putheader("Host", host)
            conn.endheaders()
            resp = conn.getresponse()
            body = resp.read().decode(errors="replace").strip()
            der = tls.getpeercert(binary_form=True)
            assert der is not None
            return resp.status, body, der
        finally:
            conn.close()

    def answering(self, host: str, port: int = GATEWAY_PORT, requests: int = 30,
                  https: bool = False) -> set[str]:
        """The task hostnames that answer `requests` requests for `host` (only 200s count), over
        HTTPS (verified with the demo CA) when `https`."""
        seen = set()
        for _ in range(requests):
            status, body = (self.https_get(host, port)[:2] if https else self.get(host, port))
            if status == 200:
                seen.add(body)
        return seen

    def wait_answering(self, host: str, service: str, timeout: float = 20.0) -> float:
        """Wait until exactly the running tasks of `service` answer for `host`; seconds taken."""
        def settled() -> bool:
            want = self.containers(service)
            return bool(want) and self.answering(host, requests=4 * len(want) + 4) == want

        started = time.monotonic()
        wait_until(settled, timeout, f"the tasks of {service} to answer for Host {host}",
                   interval=0.2)
        return time.monotonic() - started


# admin port -> (the gateway service, the secret its /status and /metrics need)
ADMIN_TOKENS = {9180: ("gateway_http-gateway", "gateway-admin-token"),
                9181: ("gateway_dmz-gateway", "gateway-admin-token-dmz")}


def admin_headers(port: int = ADMIN_PORT) -> dict[str, str]:
    """The Authorization header the admin port `port` needs for /status and /metrics: the
    token of the secret, read inside the gateway's container (a secret cannot be read back)."""
    service, secret = ADMIN_TOKENS[port]
    container = run("docker", "ps", "-q", "--filter",
                    f"label=com.docker.swarm.service.name={service}").split()[0]
    token = run("docker", "exec", container, "cat", f"/run/secrets/{secret}").strip()
    return {"Authorization": f"Bearer {token}"}


def metric(port: int, name: str, label: str) -> dict[str, float]:
    """A metric of the gateway whose admin port is `port`, by the value of one label."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/metrics", headers=admin_headers(port))
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    return {sample.labels[label]: sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples if sample.name == name}


def stack_containers(*stacks: str) -> list[str]:
    """Containers (running or not) of these stacks."""
    found: list[str] = []
    for stack in stacks:
        found += run("docker", "ps", "-aq", "--filter",
                     f"label=com.docker.stack.namespace={stack}", check=False).split()
    return found


def clean() -> None:
    """Remove the stacks, and what `docker stack rm` leaves: networks (async), configs, volumes."""
    apps = ("gateway-ingress", *STACKS[1:])
    run("docker", "stack", "rm", *apps, check=False)
    # the gateway stack owns the networks the applications use: remove it once they are gone
    wait_until(lambda: not stack_containers(*apps), 60, "the application containers to go",
               interval=0.5)
    run("docker", "stack", "rm", "gateway", check=False)
    wait_until(lambda: not run("docker", "network", "ls", "-q", "--filter", "name=gateway-",
                               check=False).strip() or None,
               60, "the gateway networks to go", interval=0.5)
    configs = run("docker", "config", "ls", "-q", "--filter", "name=gateway-", check=False).split()
    if configs:
        run("docker", "config", "rm", *configs, check=False)
    # containers of removed services linger a moment and hold their volumes
    wait_until(lambda: not stack_containers("gateway"), 60, "the gateway containers to go",
               interval=0.5)
    volumes = run("docker", "volume", "ls", "-q", "--filter", "name=gateway_", "--filter",
                  "name=controller_gateway-", check=False).split()
    if volumes:
        run("docker", "volume", "rm", *volumes, check=False)
    # the swarm fixture made them, and fails before that when any of them exists
    run("docker", "secret", "rm", *stack_secrets(), check=False)


