"""A real single-node Docker Swarm running the stacks of stacks/, deployed as docs/swarm.md says.

Runs when CI=true or GATEWAY_TEST_SWARM=1 (it starts dockerd, inits a swarm, builds images and
takes host ports 8080, 8081, 443, 8444, 9180, 9181, 8090 and 8453); skips otherwise. The gateways'
secrets are a demo CA's certificate and key, made by `scripts/demo.sh certs` in a temporary folder.
The session's fixtures undo what they did: stacks, configs, secrets, volumes, the images they
built, and - through scripts/swarm.sh - the swarm and the dockerd they started. The debootstrap
base image is kept as a cache (`scripts/images.sh clean` removes it).

Measurements (time for a scale to show, failed requests during a rolling update, ...) are printed
at the end of the run.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.support import require_docker_tier, wait_until
from tests.swarm.stacks import (
    IMAGES,
    ROOT,
    STACKS,
    Swarm,
    clean,
    create_secrets,
    deploy_commands,
    measured,
    run,
    stack_secrets,
)


@pytest.fixture(scope="session")
def swarm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Swarm]:
    require_docker_tier("GATEWAY_TEST_SWARM", "swarm tests start dockerd and take ports "
                        "8080/8081/443/8444/9180/9181/8090")

    state = tmp_path_factory.mktemp("swarm-state")
    swarm_env = {**os.environ, "SWARM_STATE_DIR": str(state)}
    subprocess.run([str(ROOT / "scripts/swarm.sh"), "up"], env=swarm_env, check=True, timeout=180)
    try:
        existing = set(run("docker", "stack", "ls", "--format", "{{.Name}}").split())
        if existing & {*STACKS, "gateway-ingress"}:
            pytest.fail(f"stacks {sorted(existing & set(STACKS))} already exist (is `make demo` "
                        "running? `make demo-down` removes it)", pytrace=False)
        secrets = set(run("docker", "secret", "ls", "--format", "{{.Name}}").split())
        if secrets & set(stack_secrets()):
            pytest.fail(f"secrets {sorted(secrets & set(stack_secrets()))} already exist (made by "
                        "`make demo`? `make demo-down` removes them)", pytrace=False)
        started = time.monotonic()
        run("scripts/images.sh", "auto", timeout=600)
        measured(f"images built in {time.monotonic() - started:.0f} s")
        try:
            certs = tmp_path_factory.mktemp("demo-certs")
            create_secrets(certs)
            commands = deploy_commands()
            assert len(commands) == len(STACKS), f"docs/swarm.md deploys {commands}"
            for command in commands:
                run(*command.split())
            s = Swarm(certs)
            try:
                for host, service in (("managerhttp", "managerhttp"), ("intrahttp", "intrahttp"),
                                      ("dmzhttp", "dmzhttp")):
                    s.wait_answering(host, service, timeout=120)
                for gateway in ("http-gateway", "dmz-gateway"):
                    wait_until(lambda g=gateway: s.healthy(g) == s.containers(g), 60,
                               f"the {gateway} container's HEALTHCHECK to pass", interval=0.5)
            except AssertionError as exc:
                log = state / "dockerd.log"  # when the fixture started dockerd
                tail = log.read_text(errors="replace").splitlines()[-30:] if log.exists() else []
                raise AssertionError("\n".join([str(exc), s.diagnose(), "--- dockerd", *tail])
                                     ) from None
            yield s
        finally:
            clean()
            for image in IMAGES.values():
                run("docker", "image", "rm", image, check=False)
    finally:
        subprocess.run([str(ROOT / "scripts/swarm.sh"), "down"], env=swarm_env, check=False,
                       timeout=120)
