"""The notify hook: transitions end up in a textfile node_exporter can read, read back with
prometheus_client's own parser."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.keepalived.notify import NotifyError, record_transition


def samples(path: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(path.read_text())
            for s in family.samples}


def notify(textfile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.keepalived", "notify", "--textfile",
                           str(textfile), *args], capture_output=True, text=True, check=False)


def test_transitions_are_counted_and_the_state_kept(tmp_path: Path) -> None:
    prom = tmp_path / "keepalived.prom"
    record_transition(prom, "INSTANCE", "gateway", "BACKUP", "250", now=100.0)
    record_transition(prom, "INSTANCE", "gateway", "MASTER", "250", now=103.5)
    line = record_transition(prom, "INSTANCE", "gateway", "FAULT", "0", now=110.0)
    record_transition(prom, "INSTANCE", "other", "BACKUP", "100", now=111.0)
    assert line == "keepalived_transition instance=gateway state=FAULT previous=MASTER priority=0"
    found = samples(prom)
    gateway = (("instance", "gateway"),)
    assert found[("keepalived_vrrp_state", gateway)] == 3
    assert found[("keepalived_vrrp_priority", gateway)] == 0
    assert found[("keepalived_vrrp_last_transition_timestamp_seconds", gateway)] == 110.0
    for state, count in (("BACKUP", 1), ("MASTER", 1), ("FAULT", 1)):
        key = ("keepalived_vrrp_transitions_total", (("instance", "gateway"), ("state", state)))
        assert found[key] == count
    assert found[("keepalived_vrrp_state", (("instance", "other"),))] == 1


def test_sync_groups_have_their_own_series(tmp_path: Path) -> None:
    prom = tmp_path / "keepalived.prom"
    record_transition(prom, "GROUP", "G1", "MASTER", "0", now=1.0)
    record_transition(prom, "INSTANCE", "G1", "BACKUP", "100", now=2.0)
    found = samples(prom)
    assert found[("keepalived_vrrp_sync_group_state", (("group", "G1"),))] == 2
    assert found[("keepalived_vrrp_state", (("instance", "G1"),))] == 1


@pytest.mark.parametrize("args", [("VRRP", "x", "MASTER", "1"), ("INSTANCE", "x", "UP", "1"),
                                  ("INSTANCE", "x", "MASTER", "high")])
def test_arguments_keepalived_never_sends_are_refused(tmp_path: Path,
                                                      args: tuple[str, str, str, str]) -> None:
    kind, name, state, priority = args
    with pytest.raises(NotifyError):
        record_transition(tmp_path / "k.prom", kind, name, state, priority)
    assert not (tmp_path / "k.prom").exists()


def test_concurrent_hooks_lose_no_transition(tmp_path: Path) -> None:
    """keepalived may run several notify scripts at once: the lock keeps every count."""
    prom = tmp_path / "keepalived.prom"
    procs = [subprocess.Popen([sys.executable, "-m", "agent.keepalived", "notify", "--textfile",
                               str(prom), "INSTANCE", f"vi{i % 2}", "MASTER", "100"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for i in range(8)]
    assert [p.wait(60) for p in procs] == [0] * 8
    found = samples(prom)
    for name in ("vi0", "vi1"):
        key = ("keepalived_vrrp_transitions_total", (("instance", name), ("state", "MASTER")))
        assert found[key] == 4


def test_command_line_logs_and_exit_codes(tmp_path: Path) -> None:
    prom = tmp_path / "sub" / "keepalived.prom"
    ok = notify(prom, "INSTANCE", "gateway", "MASTER", "250")
    assert ok.returncode == 0
    assert "keepalived_transition instance=gateway state=MASTER" in ok.stderr
    assert prom.exists()
    bad = notify(prom, "INSTANCE", "gateway", "SLEEPING", "250")
    assert bad.returncode == 2
    assert "keepalived_notify_rejected" in bad.stderr


def test_links_planted_beside_the_textfile_are_never_written_through(tmp_path: Path) -> None:
    """keepalived runs the hook as root. A link where it puts its lock or temporary file (the
    names prometheus_client's write_to_textfile and a plain open() would use) must not make it
    create or overwrite the file the link points to."""
    prom = tmp_path / "keepalived.prom"
    precious = tmp_path / "precious"
    precious.write_text("keep me\n")
    # the temporary name write_to_textfile would use in this process
    (tmp_path / f"keepalived.prom.{os.getpid()}.{threading.current_thread().ident}"
     ).symlink_to(precious)
    record_transition(prom, "INSTANCE", "gateway", "MASTER", "250")
    assert precious.read_text() == "keep me\n"
    assert samples(prom)[("keepalived_vrrp_state", (("instance", "gateway"),))] == 2
    assert prom.stat().st_mode & 0o777 == 0o644

    # a link as the lock file: refused, nothing is created where it points
    other = tmp_path / "other.prom"
    created = tmp_path / "created-by-root"
    (tmp_path / "other.prom.lock").symlink_to(created)
    result = notify(other, "INSTANCE", "gateway", "BACKUP", "100")
    assert result.returncode == 1
    assert "keepalived_notify_failed" in result.stderr
    assert not created.exists()
    assert not other.exists()
