"""The hashes nginx builds from the routes (plan/scale.py) are sized from them: the real nginx
builds each at the size it is given, without the warning that it could not, and never refuses a
long key (a route's root, its first host and its path, is a key of the JSON access log's maps)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from agent.core.routes import RouteTable, parse_routes
from agent.gateway.model import Endpoints
from agent.gateway.plan.desired import Planner
from agent.gateway.plan.observe import LogPlan
from agent.gateway.plan.scale import map_hash_bucket_size, names_hash_max_size
from tests.unit.core.test_hostile import NginxTest

LONG_HOST = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])  # 253 characters
LONG_PATH = "/" + "/".join(["p" * 40] * 5)


def nginx_builds_every_hash(tmp_path: Path, text: str) -> None:
    """The real nginx takes `text` (`-t`) and builds every hash at the size it was given."""
    checker = NginxTest(tmp_path)
    checker.routes_conf.write_text(text)
    result = subprocess.run([checker.binary, "-e", "stderr", "-p", f"{tmp_path}/", "-c",
                             str(tmp_path / "nginx.conf"), "-t"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "could not build" not in result.stderr, result.stderr


def test_sizes_follow_the_keys() -> None:
    assert names_hash_max_size(10, 2048) == 2048
    assert names_hash_max_size(10_001, 2048) == 16384
    assert map_hash_bucket_size(30) == 512
    # a pointer, the key with its length aligned to 8, the bucket's end
    assert map_hash_bucket_size(494) == 512
    assert map_hash_bucket_size(495) == 1024


def test_many_routes_and_a_long_root_build_every_hash_without_a_warning(tmp_path: Path) -> None:
    routes = [{"hosts": [f"h{i}.example"], "service": "svc", "port": 80} for i in range(3000)]
    routes.append({"hosts": [LONG_HOST], "path": LONG_PATH, "service": "svc", "port": 80,
                   "cors": {"origins": ["https://" + "o" * 90 + ".example:65535"]}})
    table = RouteTable(parse_routes({"routes": routes}).routes)
    planner = Planner(listen="127.0.0.1:8080", status_listen="127.0.0.1:9181",
                      logs=LogPlan(str(tmp_path / "access.json")))
    text = planner.render(table, {"tasks.svc": Endpoints(("10.0.0.1",), "ok")}).text
    assert "map_hash_max_size 4096;" in text  # 3001 routes' roots, and the default
    nginx_builds_every_hash(tmp_path, text)


def test_a_map_of_more_hosts_than_routes_is_sized_from_the_hosts(tmp_path: Path) -> None:
    """Hosts routed alike share a server whose location's root is a map of $host (plan/scale.py):
    that map has a key per host, here 3,001 for two routes."""
    routes = [{"hosts": [f"h{i}.example" for i in range(3000)], "service": "svc", "port": 80},
              {"hosts": ["one.example"], "service": "svc", "port": 80}]
    table = RouteTable(parse_routes({"routes": routes}).routes)
    planner = Planner(listen="127.0.0.1:8080", status_listen="127.0.0.1:9181",
                      access_log=str(tmp_path / "metrics.log"))
    text = planner.render(table, {"tasks.svc": Endpoints(("10.0.0.1",), "ok")}).text
    assert "map $host $gateway_host_root {" in text
    assert "map_hash_max_size 4096;" in text
    nginx_builds_every_hash(tmp_path, text)
