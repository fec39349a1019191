"""The namespace harness leaves nothing behind: namespaces, veths, processes, files."""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support import require_programs, require_root, wait_until
from tests.support.netns import PREFIX, Cluster, Namespace, run, sweep_stale


def namespaces() -> set[str]:
    return {line.split()[0] for line in run(["ip", "netns", "list"]).stdout.splitlines()
            if line.strip()}


def root_links() -> set[str]:
    out = run(["ip", "-o", "link", "show"]).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


OURS = {"br0", "n1", "n2", "c"}  # the harness's link names (eth0 inside the namespaces)


def alive(pid: int) -> bool:
    try:
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


def failing_test(seen: dict[str, Any]) -> None:
    with Cluster(size=2) as cluster:
        cluster.start(cluster.description("track_file"))
        cluster.wait_for_answer("node1", timeout=30)
        seen["namespaces"] = {ns.name for ns in cluster.namespaces}
        seen["pids"] = [pid for ns in cluster.namespaces for pid in ns.pids()]
        seen["workdir"] = cluster.workdir
        seen["links"] = root_links()
        raise RuntimeError("a failing test")


def test_everything_goes_away_when_a_test_fails() -> None:
    require_root()
    require_programs("ip", "keepalived", "nginx")
    assert not OURS & root_links()
    seen: dict[str, Any] = {}
    with pytest.raises(RuntimeError, match="a failing test"):
        failing_test(seen)
    made, pids, workdir = seen["namespaces"], seen["pids"], seen["workdir"]
    assert len(made) == 4
    assert len(pids) >= 6, "nginx, watcher and keepalived on each node"
    assert not made & namespaces()
    assert not [pid for pid in pids if alive(pid)]
    assert not workdir.exists()
    assert not OURS & (seen["links"] | root_links()), "nothing of it in the root namespace"


def test_namespaces_of_a_killed_run_are_swept() -> None:
    require_root()
    require_programs("ip")
    orphan = Namespace(f"{PREFIX}999999999x0-sw")  # made by a pid that does not exist
    orphan.create()
    files = Path(tempfile.gettempdir()) / f"{PREFIX}999999999x0-files"
    files.mkdir(exist_ok=True)
    sleeper = subprocess.Popen(orphan.argv(["sleep", "600"]))
    try:
        wait_until(lambda: orphan.pids(), 5, "the process inside the namespace")
        sweep_stale()
        assert orphan.name not in namespaces()
        assert not files.exists()
        deadline = time.monotonic() + 5
        while sleeper.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sleeper.poll() is not None, "the namespace's processes are killed too"
    finally:
        sleeper.kill()
        sleeper.wait()
        orphan.delete()
