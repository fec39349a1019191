"""A file the agent could not read is read again once it can (issue #24, finding 5): the routes
file, and the files routes name (error pages, password files).

The transient error is one the real agent meets: no file descriptor left ("Too many open
files", EMFILE), which idle connections to the admin port caused in the review. The test lowers
the running agent's RLIMIT_NOFILE below what it holds, changes the files, waits until the agent
has tried and failed to read them (its log says so), and lifts the limit. A file's stamp (time,
size, inode: core/files.py) is taken without a descriptor, so it does not change when the read
fails; a reader that keeps the stamp of a failed read never reads the file again.
"""

from __future__ import annotations

import resource
from collections.abc import Callable
from pathlib import Path

from tests.integration.conftest import TASK_ADDRESSES, write_routes
from tests.support import wait_until
from tests.support.gateway import Agent, Dnsmasq, Upstream

T1, T2 = TASK_ADDRESSES[:2]
StartAgent = Callable[..., Agent]


def out_of_descriptors(agent: Agent) -> tuple[int, int]:
    """Lower the agent's limit of open files below what it holds: every open() fails with
    EMFILE until it is lifted. The limit as it was."""
    assert agent.proc is not None
    before = resource.prlimit(agent.proc.pid, resource.RLIMIT_NOFILE)
    resource.prlimit(agent.proc.pid, resource.RLIMIT_NOFILE, (3, before[1]))
    return before


def test_a_routes_file_that_could_not_be_read_is_read_again(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        start_agent: StartAgent) -> None:
    dns.set("tasks.web", [T1])
    dns.set("tasks.new", [T2])
    web = {"hosts": ["web"], "service": "web", "port": upstream_port}
    agent = start_agent([web])
    assert agent.proc is not None
    assert agent.get("new")[0] == 404
    log_size = agent.log_file.stat().st_size
    limit = out_of_descriptors(agent)
    try:
        write_routes(agent.workdir / "routes.yaml",
                     [web, {"hosts": ["new"], "service": "new", "port": upstream_port}])
        wait_until(lambda: "Too many open files" in agent.log_file.read_text()[log_size:], 15,
                   "the agent to fail to read the changed routes file")
    finally:
        resource.prlimit(agent.proc.pid, resource.RLIMIT_NOFILE, limit)
    # the file is the same as when the read failed: same time, size and inode
    wait_until(lambda: agent.get("new") == (200, "task2"), 30,
               f"the new route to serve once the file can be read; log:\n{agent.log_tail()}")
    assert agent.status()["routes_error"] is None
    assert agent.get("web") == (200, "task1")


PAGE = "<!doctype html><h1>Back soon</h1>\n"


def test_a_route_file_that_could_not_be_read_is_read_again(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        start_agent: StartAgent, tmp_path: Path, reachable: Path) -> None:
    dns.set("tasks.web", [T1])
    files = tmp_path / "route-files"
    files.mkdir()
    page = files / "page.html"
    page.write_text(PAGE)
    agent = start_agent([{"hosts": ["web"], "service": "web", "port": upstream_port,
                          "maintenance": True, "error_page": "page.html"}],
                        "--route-files-dir", str(files), workdir=reachable)
    assert agent.proc is not None
    assert agent.get("web") == (503, PAGE)
    log_size = agent.log_file.stat().st_size
    limit = out_of_descriptors(agent)
    try:
        page.write_text(PAGE.replace("Back soon", "Back at noon"))
        wait_until(lambda: "error_page_refused file=page.html" in
                   agent.log_file.read_text()[log_size:], 15,
                   "the agent to fail to read the changed page")
        assert "Too many open files" in agent.log_file.read_text()[log_size:]
    finally:
        resource.prlimit(agent.proc.pid, resource.RLIMIT_NOFILE, limit)
    wait_until(lambda: agent.get("web") == (503, PAGE.replace("Back soon", "Back at noon")),
               15, f"the changed page to serve once it can be read; log:\n{agent.log_tail()}")
    # (the cycle that reloaded says so once nginx's old workers are gone)
    wait_until(lambda: "error page refused" not in agent.status()["status"], 10,
               "the refusal to be over")

