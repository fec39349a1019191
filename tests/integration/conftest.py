from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
import yaml

from tests.support import free_port
from tests.support.fakedocker import FakeDocker
from tests.support.gateway import Agent, Dnsmasq, Upstream

# Distinct loopback addresses, one per task, so each upstream answers with its own identity.
TASK_ADDRESSES = [f"127.0.10.{i}" for i in range(1, 9)]


@pytest.fixture
def dns(tmp_path: Path) -> Iterator[Dnsmasq]:
    server = Dnsmasq(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def upstream_port() -> int:
    return free_port("127.0.10.1")


@pytest.fixture(scope="session")
def tasks(upstream_port: int) -> Iterator[dict[str, Upstream]]:
    """Eight upstream 'tasks' on 127.0.10.1-8, each answering 'task1'...'task8'."""
    servers = {f"task{i + 1}": Upstream(f"task{i + 1}", a, upstream_port)
               for i, a in enumerate(TASK_ADDRESSES)}
    yield servers
    for s in servers.values():
        s.stop()


def write_routes(path: Path, routes: Sequence[dict[str, object]],
                 tcp: Sequence[dict[str, object]] = ()) -> Path:
    """A routes file: `routes`, and `tcp` routes when given."""
    doc: dict[str, object] = {"routes": list(routes)}
    if tcp:
        doc["tcp"] = list(tcp)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.fixture
def reachable() -> Iterator[Path]:
    """A work directory nginx's workers can reach: they read a password file or an error page
    at each request, and when the tests run as root they run as nobody, whom the tests' own
    temporary directories keep out. (The gateway's image runs nginx as one unprivileged user.)"""
    path = Path(tempfile.mkdtemp(prefix="gateway-reachable-"))
    path.chmod(0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def agent_on(tmp_path: Path) -> Iterator[Callable[..., Agent]]:
    """Start agents against any nameserver (`start_agent` is this with dnsmasq); each is stopped
    at the end of the test."""
    agents: list[Agent] = []

    def start(nameserver: str, routes: Sequence[dict[str, object]], *extra: str,
              wait_ready: bool = True, workdir: Path | None = None,
              admin_address: str = "127.0.0.1",
              task_networks: str | None = "127.0.0.0/8",
              admin_token: str | None = None,
              tcp: Sequence[dict[str, object]] = (),
              env: dict[str, str] | None = None,
              nofile: tuple[int, int] | None = None, stdout: int | None = None) -> Agent:
        wd = workdir or tmp_path / f"agent{len(agents)}"
        wd.mkdir(exist_ok=True)
        routes_file = write_routes(wd / "routes.yaml", routes, tcp)
        agent = Agent(wd, routes_file, nameserver, extra=["--poll-interval", "0.5", *extra],
                      admin_address=admin_address, task_networks=task_networks,
                      admin_token=admin_token, env=env, nofile=nofile, stdout=stdout)
        agents.append(agent)
        agent.start(wait_ready=wait_ready)
        return agent

    yield start
    for agent in agents:
        agent.stop()


@pytest.fixture
def start_agent(dns: Dnsmasq, agent_on: Callable[..., Agent]) -> Callable[..., Agent]:
    def start(routes: Sequence[dict[str, object]], *extra: str, **options: object) -> Agent:
        return agent_on(dns.nameserver, routes, *extra, **options)

    return start


@pytest.fixture
def docker() -> Iterator[FakeDocker]:
    """A Docker API the controller reads (tests/support/fakedocker.py)."""
    fake = FakeDocker()
    yield fake
    fake.stop()
