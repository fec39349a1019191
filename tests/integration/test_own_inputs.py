"""The agent's own inputs, through the real programs (issue #24, finding 8): an Authorization
header that is not UTF-8, a YAML alias bomb and an endless file as the routes file, and an agent
killed outright (its nginx must not outlive it holding the ports).

Memory and time are bounded by resource limits on the child (RLIMIT_AS, RLIMIT_CPU), and what is
asserted is the answer and the child's peak memory (ru_maxrss from wait4), never a duration.
"""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.conftest import TASK_ADDRESSES
from tests.support import wait_until
from tests.support.controller import ControllerProcess
from tests.support.fakedocker import FakeDocker
from tests.support.gateway import Agent, Dnsmasq, Upstream

ROOT = Path(__file__).resolve().parents[2]
T1 = TASK_ADDRESSES[0]
StartAgent = Callable[..., Agent]
MiB = 1024 * 1024
# what a child may use: a check that needs more has not bounded what it reads
ADDRESS_SPACE = 1024 * MiB
CPU_SECONDS = 60  # a guard that ends a runaway child, not a measurement
PEAK_RSS = 250 * MiB


def bounded_run(*args: str) -> tuple[int, str, int]:
    """`gateway-agent ARGS` under RLIMIT_AS and RLIMIT_CPU: (exit status, stderr, peak RSS in
    bytes, from the child's own rusage)."""
    def limits() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))
        resource.setrlimit(resource.RLIMIT_CPU, (CPU_SECONDS, CPU_SECONDS))

    with subprocess.Popen([sys.executable, "-m", "agent", *args], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, preexec_fn=limits, cwd=ROOT) as proc:
        assert proc.stderr is not None
        err = proc.stderr.read().decode(errors="replace")
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, err, usage.ru_maxrss * 1024


def alias_bomb(levels: int) -> str:
    """"Billion laughs": each level a list of nine aliases of the one before; nine levels are
    about 500 bytes and 9**9 strings once expanded."""
    lines = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]")
    # a value the model refuses, whose error quotes what it was given
    lines.append(f"routes: [{{hosts: [a.example.com], service: a, port: *l{levels - 1}}}]")
    return "\n".join(lines) + "\n"


def test_a_yaml_alias_bomb_is_refused_with_bounded_memory(tmp_path: Path) -> None:
    bomb = tmp_path / "routes.yaml"
    bomb.write_text(alias_bomb(10))  # one level more than the 538 bytes of the review
    assert len(bomb.read_bytes()) < 700
    code, err, peak = bounded_run("check", "--routes", str(bomb))
    assert code == 1, err
    assert str(bomb) in err, err
    assert "refused as an alias bomb" in err, err
    assert "Traceback" not in err
    assert peak < PEAK_RSS, f"peak RSS {peak // MiB} MiB"


def test_an_endless_routes_file_is_refused_with_bounded_memory(tmp_path: Path) -> None:
    endless = tmp_path / "routes.yaml"
    endless.symlink_to("/dev/zero")
    code, err, peak = bounded_run("check", "--routes", str(endless))
    assert code == 1, err
    assert str(endless) in err, err
    assert "larger than 4 MiB" in err, err
    assert "Traceback" not in err
    assert peak < PEAK_RSS, f"peak RSS {peak // MiB} MiB"
    # just below the bound is a file like any other (here: one that is not YAML routes)
    big = tmp_path / "big.yaml"
    big.write_text("routes: []\n# " + "x" * (4 * MiB - 20) + "\n")
    code, err, _ = bounded_run("check", "--routes", str(big))
    assert code == 0, err


def test_a_running_agent_refuses_an_endless_routes_file_and_keeps_serving(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        start_agent: StartAgent) -> None:
    dns.set("tasks.web", [T1])
    agent = start_agent([{"hosts": ["web"], "service": "web", "port": upstream_port}])
    assert agent.proc is not None
    # the guard: without a bound the agent fails for want of memory instead of growing
    resource.prlimit(agent.proc.pid, resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))
    routes = agent.workdir / "routes.yaml"
    good = routes.read_text()
    routes.unlink()
    routes.symlink_to("/dev/zero")
    wait_until(lambda: "larger than 4 MiB" in (agent.status()["routes_error"] or ""), 15,
               f"the agent to refuse the endless file; log:\n{agent.log_tail()}")
    assert agent.get("web") == (200, "task1")
    with open(f"/proc/{agent.proc.pid}/status") as f:
        peak = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    assert peak < PEAK_RSS, f"the agent's peak RSS {peak // MiB} MiB"
    routes.unlink()
    routes.write_text(good)
    wait_until(lambda: agent.status()["routes_error"] is None, 15, "the file to be taken again")


def raw_request(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


NOT_UTF8 = (b"GET /status HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
            b"Authorization: Bearer \xff\xfe\xc3\x28token\r\n\r\n")


def test_an_authorization_header_that_is_not_utf8_gets_401_without_a_traceback(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        start_agent: StartAgent, tmp_path: Path) -> None:
    dns.set("tasks.web", [T1])
    token = "t0ken-of-the-admin-port-0123456789"
    agent = start_agent([{"hosts": ["web"], "service": "web", "port": upstream_port}],
                        admin_token=token)
    answer = raw_request(agent.admin_port, NOT_UTF8)
    assert answer.startswith(b"HTTP/1.1 401 "), answer[:200]
    assert agent.admin("/status")[0] == 200  # the right token still works
    assert "Traceback" not in agent.log_tail(400)

    docker = FakeDocker()
    token_file = tmp_path / "controller-token"
    token_file.write_text(token + "\n")
    controller = ControllerProcess(tmp_path, docker, ["--controller-token-file", str(token_file)],
                                   token=token)
    try:
        controller.start()
        answer = raw_request(controller.port, NOT_UTF8.replace(b"/status", b"/routes"))
        assert answer.startswith(b"HTTP/1.1 401 "), answer[:200]
        assert controller.get("/routes")[0] == 200
        assert "Traceback" not in controller.log()
    finally:
        controller.stop()
        docker.stop()


def _alive(pid: int) -> bool:
    """The process runs (a zombie, dead but not reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def test_nginx_does_not_outlive_an_agent_killed_outright(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        start_agent: StartAgent) -> None:
    dns.set("tasks.web", [T1])
    agent = start_agent([{"hosts": ["web"], "service": "web", "port": upstream_port}])
    master = agent.nginx_master()
    assert agent.get("web") == (200, "task1")
    assert not _port_free(agent.port)
    try:
        agent.stop(signal.SIGKILL)
        wait_until(lambda: _port_free(agent.port) and not _alive(master), 10,
                   "nginx to stop serving once the agent is killed")
    finally:
        if _alive(master):  # what the old code left behind: do not leave it to the next test
            os.killpg(master, signal.SIGKILL)
    with pytest.raises(ConnectionRefusedError):
        agent.get("web")
