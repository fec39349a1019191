"""The gateway on a real single-node swarm, through its host-mode published ports.

The tests share one deployment (tests/swarm/conftest.py) and run in this file's order: the
scaling test leaves managerhttp at 2 tasks for the rolling update, and the gateway is killed last.
"""

from __future__ import annotations

import http.client
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from tests.support import wait_until
from tests.support.gateway import http_get
from tests.swarm.stacks import (
    ADMIN_PORT,
    DMZ_GATEWAY_PORT,
    DMZ_HTTPS_PORT,
    GATEWAY_PORT,
    HTTPS_PORT,
    ROOT,
    Swarm,
    admin_headers,
    docs_commands,
    measured,
    metric,
    run,
)

pytestmark = pytest.mark.swarm

ROUTES = yaml.safe_load((ROOT / "stacks" / "routes.yml").read_text(encoding="utf-8"))["routes"]


def endpoints_metric(port: int = ADMIN_PORT) -> dict[str, float]:
    """gateway_upstream_endpoints by service, from the gateway's /metrics."""
    return metric(port, "gateway_upstream_endpoints", "service")


def gateway_container(swarm: Swarm) -> str:
    (container,) = swarm.containers("http-gateway")
    return container


def test_the_gateway_image_runs_nginx_1_27_4_or_newer(swarm: Swarm) -> None:
    """The image built here (a local base without a registry) carries the nginx the product
    needs: `server ... resolve` in upstreams and keepalive_min_timeout."""
    said = run("docker", "exec", gateway_container(swarm), "sh", "-c", "nginx -v 2>&1")
    m = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", said)
    assert m is not None, said
    measured(f"the gateway image's nginx: {m.group(0)}")
    assert tuple(int(x) for x in m.groups()) >= (1, 27, 4)


def test_gateway_check_asks_the_real_docker_engine_for_a_service_s_tasks(swarm: Swarm) -> None:
    """`gateway-check --docker-service` against this node's dockerd (the unit tests use a fake
    engine): the gateway's healthy task passes; a service without a task here, and one that
    does not exist, fail, each saying why."""
    def check(service: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "agent.check", "--docker-service", service,
                               "--timeout", "5"], capture_output=True, text=True, timeout=30,
                              check=False, cwd=ROOT)

    ok = check(swarm.service("http-gateway"))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    run("docker", "service", "scale", "--detach=false", f"{swarm.service('intrahttp')}=0",
        timeout=120)
    try:
        none = check(swarm.service("intrahttp"))
        assert none.returncode == 1
        assert "no running task on this node" in none.stdout + none.stderr
    finally:
        run("docker", "service", "scale", "--detach=false", f"{swarm.service('intrahttp')}=2",
            timeout=120)
    unknown = check("no-such-service")
    assert unknown.returncode == 1
    assert "no running task on this node" in unknown.stdout + unknown.stderr
    swarm.wait_answering("intrahttp", "intrahttp", timeout=30)


def test_every_host_routes_to_its_service(swarm: Swarm) -> None:
    for route in ROUTES:
        tasks = swarm.containers(route["service"])
        assert len(tasks) >= 2, f"{route['service']} runs {tasks}"
        https = "tls" in route  # its plain HTTP redirects to HTTPS (test_https.py)
        for host in route["hosts"]:
            # round robin: every task answers, and nothing else does
            assert swarm.answering(host, HTTPS_PORT if https else GATEWAY_PORT,
                                   requests=6 * len(tasks), https=https) == tasks, host
    assert endpoints_metric() == {r["service"]: len(swarm.containers(r["service"]))
                                  for r in ROUTES}


def test_unknown_host_is_refused(swarm: Swarm) -> None:
    every_task = set().union(*(swarm.containers(r["service"]) for r in ROUTES))
    for host in ("unknown.example.com", "managerhttp.evil.example", "127.0.0.1:8080",
                 "localhost", "", None):
        status, body = swarm.get(host)
        assert status in (400, 404), (host, status, body)
        assert body not in every_task


def test_dmz_gateway_serves_dmz_routes_only(swarm: Swarm) -> None:
    dmz_tasks = swarm.containers("dmzhttp")
    assert swarm.answering("dmzhttp", port=DMZ_GATEWAY_PORT) == dmz_tasks
    assert swarm.answering("www.example.com", port=DMZ_HTTPS_PORT, https=True) == dmz_tasks
    assert endpoints_metric(ADMIN_PORT + 1) == {"dmzhttp": len(dmz_tasks)}


def test_no_host_header_reaches_intra_through_the_dmz_gateway(swarm: Swarm) -> None:
    internal = swarm.containers("intrahttp") | swarm.containers("managerhttp")
    addresses = swarm.ip_addresses("intrahttp") | swarm.ip_addresses("managerhttp")
    hosts = {h for r in ROUTES for h in r["hosts"]} | {
        "intrahttp", "tasks.intrahttp", "intra_intrahttp", "intrahttp:8888", "managerhttp",
        "tasks.managerhttp", "manager_managerhttp", "localhost", "127.0.0.1",
        *addresses, *(f"{a}:8888" for a in addresses)}
    answered = {}
    for host in sorted(hosts):
        for path in ("/", f"http://{host}/", f"http://{host}:8888/"):
            status, body = swarm.get(host, port=DMZ_GATEWAY_PORT, path=path)
            answered[(host, path)] = status
            assert body not in internal, f"Host {host!r}, {path}: an internal task answered"
    # nor can anything in the dmz gateway's container: it is not on the intra network at all
    (dmz_gateway,) = swarm.containers("dmz-gateway")
    probe = ("import sys, urllib.request\n"
             "for a in sys.argv[1:]:\n"
             "    try: print(urllib.request.urlopen(f'http://{a}:8888/', timeout=2).read())\n"
             "    except OSError: pass\n")
    bodies = run("docker", "exec", dmz_gateway, "python3", "-c", probe, *sorted(addresses))
    assert not any(task in bodies for task in internal), bodies
    dmz_hosts = {h for r in ROUTES if r.get("zone") == "dmz" for h in r["hosts"]}
    served = {key for key, status in answered.items() if status not in (400, 404)}
    assert {host for host, _ in served} <= dmz_hosts, served


def test_the_admin_ports_show_status_and_metrics_to_their_own_token_only(swarm: Swarm) -> None:
    """Published in host mode on every gateway node: /status and /metrics name every route,
    service and task address, so each gateway answers them to its own token only (the stacks'
    gateway-admin-token secrets); /readyz, which keepalived's check asks, stays open."""
    for port, other in ((ADMIN_PORT, ADMIN_PORT + 1), (ADMIN_PORT + 1, ADMIN_PORT)):
        for path in ("/status", "/metrics"):
            assert http_get(port, "localhost", path)[0] == 401, (port, path)
            # the dmz gateways' token does not open the main gateway's, nor the reverse
            assert http_get(port, "localhost", path, headers=admin_headers(other))[0] == 401
            assert http_get(port, "localhost", path, headers=admin_headers(port))[0] == 200
        assert http_get(port, "localhost", "/readyz")[:2] == (200, "ready\n")


def test_scaling_is_followed_and_zero_tasks_answer_503(swarm: Swarm) -> None:
    gateway = gateway_container(swarm)
    for replicas in (3, 5, 1, 0, 2):
        started = time.monotonic()
        swarm.scale("managerhttp", replicas)
        if replicas == 0:
            wait_until(lambda: swarm.get("managerhttp")[0] == 503, 20,
                       "managerhttp to answer 503 with no task", interval=0.1)
            wait_until(lambda: endpoints_metric().get("managerhttp") == 0, 5,
                       "gateway_upstream_endpoints to say 0")
        else:
            wait_until(lambda n=replicas: len(swarm.containers("managerhttp")) == n, 60,
                       f"{replicas} managerhttp tasks to run", interval=0.2)
            swarm.wait_answering("managerhttp", "managerhttp", timeout=20)
            assert endpoints_metric()["managerhttp"] == replicas
        measured(f"scale managerhttp -> {replicas}: the gateway followed "
                 f"{time.monotonic() - started:.1f} s after `docker service scale`")
    assert gateway_container(swarm) == gateway, "the gateway's container was replaced"
    tasks = run("docker", "service", "ps", "-q", swarm.service("http-gateway")).split()
    assert len(tasks) == 1, f"the gateway was restarted: tasks {tasks}"


class Client(threading.Thread):
    """Requests for Host managerhttp through the gateway, one after another, until stopped.

    Strict: nothing is sent again. keepalive=True reuses one connection while the server keeps
    it open (a request answered with "Connection: close" is followed by a new connection: the
    server asked); `post` sends every third request as a POST with a body, which no client
    would retry. A failure is any request without a 200.
    """

    def __init__(self, keepalive: bool, post: bool = False) -> None:
        super().__init__()
        self.keepalive = keepalive
        self.post = post
        self.stop = threading.Event()
        self.results: list[tuple[int, str]] = []
        self.failed_ids: list[str] = []  # X-Request-Id of each answer that was not a 200

    def _connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", GATEWAY_PORT, timeout=10)

    def run(self) -> None:
        conn: http.client.HTTPConnection | None = None
        n = 0
        while not self.stop.is_set():
            conn = conn or self._connect()
            n += 1
            try:
                if self.post and n % 3 == 0:
                    conn.request("POST", "/cgi-bin/hostname", body=b"order=%d" % n,
                                 headers={"Host": "managerhttp"})
                else:
                    conn.request("GET", "/", headers={"Host": "managerhttp"})
                resp = conn.getresponse()
                self.results.append((resp.status, resp.read().decode().strip()))
                if resp.status != 200:
                    self.failed_ids.append(resp.getheader("X-Request-Id") or "")
                closing = resp.will_close
            except (OSError, http.client.HTTPException) as exc:
                self.results.append((0, repr(exc)))
                closing = True
            if closing or not self.keepalive:
                conn.close()
                conn = None
            if n % 50 == 0:  # now and then idle, as a browser between clicks
                time.sleep(0.3)
        if conn is not None:
            conn.close()

    @property
    def failed(self) -> list[tuple[int, str]]:
        return [r for r in self.results if r[0] != 200]


def gateway_says(swarm: Swarm, request_ids: list[str]) -> str:
    """The gateway's access log lines of these requests and nginx's warnings and errors: what
    a failure's message needs to tell a gateway's fault from a task's."""
    ids = [f'"request_id":"{i}"' for i in request_ids if i]
    warned = re.compile(r"\[(warn|error|crit|alert|emerg)\]")
    lines = [line for line in swarm.logs("http-gateway", "--raw").splitlines()
             if any(i in line for i in ids) or warned.search(line)]
    return "\n".join(["--- the gateway's log", *lines[-40:]])


def test_rolling_update_and_scaling_under_load_lose_no_request(swarm: Swarm) -> None:
    """docs/swarm.md's settings (start-first, a drain on SIGTERM within stop_grace_period), a
    force update, a scale up and a scale down, under kept-alive GETs and POSTs."""
    before = swarm.containers("managerhttp")
    assert len(before) == 2
    reloads = metric(ADMIN_PORT, "gateway_reloads_total", "result").get("success", 0.0)
    clients = [Client(keepalive=True, post=True) for _ in range(3)] + [Client(keepalive=False)]
    for client in clients:
        client.start()
    try:
        time.sleep(1)
        started = time.monotonic()
        run("docker", "service", "update", "--force", "--detach=false",
            swarm.service("managerhttp"), timeout=180)
        updated = time.monotonic() - started
        swarm.wait_answering("managerhttp", "managerhttp", timeout=20)
        run("docker", "service", "scale", "--detach=false",
            f"{swarm.service('managerhttp')}=6", timeout=120)
        wait_until(lambda: endpoints_metric().get("managerhttp") == 6, 20,
                   "the gateway to see 6 tasks")
        run("docker", "service", "scale", "--detach=false",
            f"{swarm.service('managerhttp')}=2", timeout=120)
        wait_until(lambda: endpoints_metric().get("managerhttp") == 2, 20,
                   "the gateway to see 2 tasks")
        time.sleep(6)  # the stopped tasks drain and exit while the clients go on
    finally:
        for client in clients:
            client.stop.set()
            client.join()
    reloaded = metric(ADMIN_PORT, "gateway_reloads_total", "result").get("success", 0.0) - reloads
    for client in clients:
        kind = ("kept-alive, a third POSTs" if client.keepalive else "a new connection each")
        measured(f"rolling update of managerhttp (2 tasks, --force, {updated:.0f} s), scale to "
                 f"6 and back to 2, {kind}: {len(client.failed)} failed of "
                 f"{len(client.results)} requests; {reloaded:.0f} reloads")
    after = swarm.containers("managerhttp")
    assert not after & before, "the update did not replace the tasks"
    for client in clients:
        assert {body for status, body in client.results if status == 200} & after
        assert client.failed == [], (f"{len(client.failed)} of {len(client.results)} requests "
                                     f"failed: {client.failed[:5]}\n"
                                     f"{gateway_says(swarm, client.failed_ids)}")
    assert reloaded == 0, "tasks changed, routes did not: nginx follows them without a reload"


def test_killed_gateway_is_restarted_and_routes_again(swarm: Swarm) -> None:
    old = gateway_container(swarm)
    killed = time.monotonic()
    run("docker", "kill", old)
    wait_until(lambda: (swarm.containers("http-gateway") - {old}) or None, 60,
               "swarm to start a new gateway container", interval=0.2)
    wait_until(lambda: swarm.get("managerhttp", timeout=2)[1] in swarm.containers("managerhttp"),
               30, "the new gateway to route managerhttp", interval=0.1)
    measured(f"gateway container killed: routing again {time.monotonic() - killed:.1f} s later")
    swarm.wait_answering("managerhttp", "managerhttp", timeout=20)


def test_no_task_answers_503_also_when_the_nodes_resolver_does_not_answer(swarm: Swarm) -> None:
    """Docker's DNS forwards names it does not know - a service with no task - to the node's
    resolvers. Where those do not answer (an air-gapped site), "no task" looks like a failed
    lookup: the gateway must still answer 503 rather than keep sending to tasks that are gone."""
    gateway = swarm.service("http-gateway")
    # 127.0.0.1 inside the container: a resolver that never answers, on any machine
    run("docker", "service", "update", "--detach=false", "--dns-add", "127.0.0.1", gateway)
    try:
        swarm.wait_answering("intrahttp", "intrahttp", timeout=60)
        started = time.monotonic()
        swarm.scale("intrahttp", 0)
        wait_until(lambda: swarm.get("intrahttp")[0] == 503, 30,
                   "intrahttp to answer 503 with no task and a silent resolver", interval=0.1)
        measured(f"scale intrahttp -> 0 with the node's resolver silent: 503 after "
                 f"{time.monotonic() - started:.1f} s")
        assert endpoints_metric().get("intrahttp") == 0
        swarm.scale("intrahttp", 2)
        swarm.wait_answering("intrahttp", "intrahttp", timeout=30)
    finally:
        # not waited for (about 20 s): the tests after this one use other services, and the
        # session's teardown removes the stack
        run("docker", "service", "update", "--detach", "--dns-rm", "127.0.0.1", gateway)


def test_ingress_variant_deploys_as_documented(swarm: Swarm) -> None:
    (command,) = docs_commands(r"docker stack deploy -c stacks/gateway-ingress\.yml \S+")
    run(*command.split())
    service = "gateway-ingress_http-gateway"
    mode = run("docker", "service", "inspect", "-f", "{{(index .Endpoint.Ports 0).PublishMode}}",
               service).strip()
    assert mode == "ingress"

    def healthy() -> list[str]:
        out = run("docker", "ps", "--filter", f"label=com.docker.swarm.service.name={service}",
                  "--filter", "health=healthy", "--format", "{{.ID}}")
        return out.split() if len(out.split()) == 2 else []

    # healthy = its own /readyz: nginx serving, discovery answering. The mesh's port itself needs
    # IPVS, which this machine's kernel lacks, so it is asked from inside the task.
    containers = wait_until(healthy, 90, "both ingress gateway tasks to be healthy", interval=0.5)
    probe = ("import http.client\n"
             "c = http.client.HTTPConnection('127.0.0.1', 8080, timeout=5)\n"
             "c.request('GET', '/', headers={'Host': 'managerhttp'})\n"
             "r = c.getresponse(); print(r.status, r.read().decode().strip())\n")
    for container in containers:
        status, body = run("docker", "exec", container, "python3", "-c", probe).split()
        assert status == "200"
        assert body in swarm.containers("managerhttp")


def test_docs_and_stacks_agree() -> None:
    """Every stack file is deployed by a documented command (an overlay with the stack it
    goes over: `-c stacks/gateway.yml -c stacks/gateway-routes-file.yml`), which the header of
    the file (the overlay's, for an overlay) gives."""
    commands = [c.split("docker stack deploy ", 1)[1] for c in docs_commands(
        r"(?:[A-Z_]+=\S* )*docker stack deploy (?:-c stacks/\S+\.yml )+\S+")]
    documented = {f for c in commands for f in re.findall(r"-c stacks/(\S+)\.yml", c)}
    stack_files = {p.stem for p in (ROOT / "stacks").glob("*.yml")} - {"routes"}
    assert documented == stack_files
    for command in commands:
        file = re.findall(r"-c stacks/(\S+)\.yml", command)[-1]
        header = Path(ROOT / "stacks" / f"{file}.yml").read_text(encoding="utf-8")
        assert f"docker stack deploy {command}" in header
