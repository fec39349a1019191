"""How nginx is sized from the open files and the kernel's listen queue (drivers/capacity.py),
and what the configuration then says."""

from __future__ import annotations

import logging
import resource
from pathlib import Path

import pytest

from agent.core.routes import RouteTable
from agent.core.settings import SettingsError
from agent.gateway.drivers import capacity
from agent.gateway.plan.desired import Planner
from agent.gateway.plan.mainconf import render_main_conf
from agent.gateway.settings import GatewaySettings, add_arguments, from_sources


@pytest.mark.parametrize(("files", "connections"), [
    (256, 192), (1024, 896), (20_000, 17_500), (65_536, 61_440), (1_048_576, 1_044_480)])
def test_worker_connections_leave_files_for_what_is_not_a_connection(
        files: int, connections: int) -> None:
    assert capacity.worker_connections(files) == connections


def test_the_backlog_is_the_kernels_somaxconn_or_nginxs_default(tmp_path: Path) -> None:
    path = tmp_path / "somaxconn"
    path.write_text("4096\n")
    assert capacity.listen_backlog(path) == 4096
    path.write_text("garbage")
    assert capacity.listen_backlog(path) == 511
    assert capacity.listen_backlog(tmp_path / "absent") == 511


@pytest.fixture
def limit() -> object:
    """The test process's limit of open files, put back after the test."""
    saved = resource.getrlimit(resource.RLIMIT_NOFILE)
    yield saved
    resource.setrlimit(resource.RLIMIT_NOFILE, saved)


def test_auto_raises_the_soft_limit_to_the_hard_one(limit: tuple[int, int], tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    hard = limit[1]
    if hard == resource.RLIM_INFINITY or hard < 2048:
        pytest.skip(f"needs a finite hard limit of open files of 2048 or more, not {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
    (tmp_path / "somaxconn").write_text("4096\n")
    with caplog.at_level(logging.INFO):
        chosen = capacity.choose("auto", somaxconn=tmp_path / "somaxconn")
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == hard
    assert chosen.open_files == min(hard, capacity.AUTO_MAX)
    assert chosen.limit_before == (1024, hard)
    assert chosen.backlog == 4096
    assert chosen.status()["limit_before"] == {"soft": 1024, "hard": hard}
    assert ("open_files_low" in caplog.text) == (chosen.open_files < capacity.LOW)


def test_a_low_limit_is_said_in_the_log(limit: tuple[int, int],
                                         caplog: pytest.LogCaptureFixture) -> None:
    chosen = capacity.choose("1024")
    assert (chosen.open_files, chosen.worker_connections, chosen.low) == (1024, 896, True)
    assert "open_files_low open_files=1024 worker_connections=896" in caplog.text
    assert "ulimits: nofile" in caplog.text


def test_more_files_than_the_hard_limit_are_refused_with_a_warning(
        limit: tuple[int, int], caplog: pytest.LogCaptureFixture) -> None:
    """Above the hard limit only CAP_SYS_RESOURCE may go (these machines' containers lack it,
    as Docker's do by default): nginx gets the hard limit, and the log says why."""
    hard = limit[1]
    if hard == resource.RLIM_INFINITY:
        pytest.skip("no hard limit of open files to go above")
    chosen = capacity.choose(str(hard + 1))
    assert chosen.open_files == hard
    assert f"open_files_refused wanted={hard + 1} hard={hard}" in caplog.text


def test_open_files_is_an_option_with_its_variable() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert from_sources(parser.parse_args([]), {}).open_files == "auto"
    assert from_sources(parser.parse_args(["--open-files", "200000"]), {}).open_files == "200000"
    assert from_sources(parser.parse_args([]),
                        {"GATEWAY_OPEN_FILES": "4096"}).open_files == "4096"
    with pytest.raises(SettingsError, match="--open-files"):
        from_sources(parser.parse_args(["--open-files", "12"]), {})
    assert GatewaySettings().open_files == "auto"


def test_the_main_configuration_says_the_files_connections_and_keepalive_bounds() -> None:
    text = render_main_conf(prefix=Path("/p"), routes_conf=Path("/p/g.conf"),
                            worker_processes="2", open_files=20_000, worker_connections=17_500)
    lines = [line.strip() for line in text.splitlines()]
    assert "worker_rlimit_nofile 20000;" in lines
    assert "worker_connections 17500;" in lines
    assert "keepalive_requests 100000;" in lines
    assert "keepalive_time 1h;" in lines
    assert "http2_max_concurrent_streams 128;" in lines


def test_the_backlog_is_on_one_listen_line_of_each_port() -> None:
    renderer = Planner(listen="0.0.0.0:8080", status_listen="127.0.0.1:9181", backlog=4096)
    text = renderer.render(RouteTable(()), {}).text
    assert [line.strip() for line in text.splitlines() if "backlog" in line] == [
        "listen 0.0.0.0:8080 default_server backlog=4096;"]
    plain = Planner(listen="0.0.0.0:8080", status_listen="127.0.0.1:9181")
    assert "backlog" not in plain.render(RouteTable(()), {}).text
