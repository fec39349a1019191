"""A routes change by docs/swarm.md's one command, on the real swarm: `ROUTES_VERSION=2 docker
stack deploy -c stacks/controller.yml controller` with a new route. Only the controller restarts;
the gateways' tasks stay the same, serve the new route, and a kept-alive client on them loses
nothing. The module puts the stacks' routes back (a third version) before it ends.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support import wait_until
from tests.swarm.stacks import (
    DMZ_GATEWAY_PORT,
    GATEWAY_PORT,
    IMAGES,
    NOFILE,
    ROOT,
    Swarm,
    docs_commands,
    measured,
    run,
)
from tests.swarm.test_stacks import Client

pytestmark = pytest.mark.swarm

GATEWAYS = ("gateway_http-gateway", "gateway_dmz-gateway")


def gateway_tasks() -> dict[str, set[str]]:
    """The running task ids of each gateway service."""
    return {s: set(run("docker", "service", "ps", "-q", "--filter", "desired-state=running",
                       s).split()) for s in GATEWAYS}


def deploy_routes(command: str, version: int, routes: list[dict[str, object]],
                  workdir: Path) -> None:
    """The documented command, run in a copy of the repository's stacks whose routes file is
    `routes`, under config version `version`."""
    staged = workdir / f"v{version}"
    shutil.copytree(ROOT / "stacks", staged / "stacks")
    spec = yaml.safe_load((staged / "stacks" / "routes.yml").read_text(encoding="utf-8"))
    spec["routes"] = routes
    (staged / "stacks" / "routes.yml").write_text(yaml.safe_dump(spec, sort_keys=False))
    command = re.sub(r"^ROUTES_VERSION=\d+", f"ROUTES_VERSION={version}", command)
    proc = subprocess.run(["sh", "-c", command], cwd=staged, env={**os.environ, **IMAGES, **NOFILE},
                          capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, f"{command}: {proc.stdout}{proc.stderr}"


def test_a_routes_change_by_the_documented_command_restarts_no_gateway(
        swarm: Swarm, tmp_path: Path) -> None:
    (command,) = docs_commands(
        r"ROUTES_VERSION=2 docker stack deploy -c stacks/controller\.yml controller")
    original = yaml.safe_load((ROOT / "stacks" / "routes.yml").read_text(encoding="utf-8"))
    routes = list(original["routes"])
    added = [{"hosts": ["changed"], "service": "managerhttp", "port": 8888},
             {"hosts": ["dmzchanged"], "service": "dmzhttp", "port": 8888, "zone": "dmz"}]
    assert swarm.get("changed")[0] == 404
    tasks = gateway_tasks()
    containers = {g: swarm.containers(g) for g in ("http-gateway", "dmz-gateway")}
    clients = [Client(keepalive=True, post=True) for _ in range(2)] + [Client(keepalive=False)]
    for client in clients:
        client.start()
    try:
        deploy_routes(command, 2, routes + added, tmp_path)
        wait_until(lambda: swarm.get("changed")[1] in swarm.containers("managerhttp"), 90,
                   "the new route on the http gateway", interval=0.5)
        wait_until(lambda: swarm.get("dmzchanged", DMZ_GATEWAY_PORT)[1] in
                   swarm.containers("dmzhttp"), 30, "the new dmz route on the dmz gateway",
                   interval=0.5)
    finally:
        for client in clients:
            client.stop.set()
            client.join()
    assert gateway_tasks() == tasks, "a gateway task was replaced"
    assert {g: swarm.containers(g) for g in containers} == containers
    for client in clients:
        kind = "kept-alive, a third POSTs" if client.keepalive else "a new connection each"
        measured(f"routes change (ROUTES_VERSION=2, controller stack), {kind}: "
                 f"{len(client.failed)} failed of {len(client.results)} requests")
        assert client.failed == [], client.failed[:5]
    # back to the stacks' own routes (a third version: configs cannot change)
    deploy_routes(command, 3, routes, tmp_path)
    wait_until(lambda: swarm.get("changed")[0] == 404, 90, "the added route to go", interval=0.5)
    assert gateway_tasks() == tasks
    assert swarm.get("managerhttp", GATEWAY_PORT)[0] == 200
