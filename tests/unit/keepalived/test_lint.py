"""lint: quiet on what render writes, and it finds each mistake planted in a copy of it, at the
right file and line, and nothing else; and it flags every mistake of the article's config."""

from __future__ import annotations

import argparse
import os
import pwd
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.keepalived.cli import register
from agent.keepalived.lint import lint_files
from agent.keepalived.render import cluster_from_dict, render_node
from tests.support import require_root

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "keepalived" / "cluster.example.yaml"
ARTICLE = ROOT / "tests" / "keepalived" / "fixtures" / "article"
NODES = ("node1", "node2", "node3")


def executable(path: Path, text: str = "#!/bin/sh\nexit 0\n", mode: int = 0o755) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


@dataclass
class Case:
    """A mistake planted in rendered configs: edits per node, and what lint must report as
    (node, a text on the reported line, code)."""

    id: str
    edits: dict[str, list[tuple[str, str]]]
    expected: list[tuple[str, str, str]]
    cluster: dict[str, Any] = field(default_factory=dict)


CASES = [
    Case("vrid", {"node2": [("virtual_router_id 51", "virtual_router_id 52")]},
         [("node2", "virtual_router_id 52", "vrid-mismatch")]),
    Case("duplicate priority", {"node3": [("priority 230", "priority 240")]},
         [("node3", "priority 240", "duplicate-priority")]),
    Case("master not highest", {"node3": [("state BACKUP", "state MASTER")]},
         [("node3", "state MASTER", "master-not-highest")]),
    Case("two masters with nopreempt",
         {"node1": [("state BACKUP", "state MASTER")], "node2": [("state BACKUP", "state MASTER")]},
         [("node1", "nopreempt", "nopreempt-master"), ("node2", "nopreempt", "nopreempt-master"),
          ("node2", "state MASTER", "master-not-highest")],
         {"preempt": False}),
    Case("auth_pass longer than 8",
         {n: [("auth_pass s3cret", "auth_pass s3cret-and-more")] for n in NODES},
         [(n, "auth_pass", "auth-pass-truncated") for n in NODES],
         {"vrrp_version": 2, "auth_pass": "s3cret"}),
    Case("auth differs", {"node2": [("auth_pass s3cret", "auth_pass other")]},
         [("node2", "authentication {", "auth-mismatch")],
         {"vrrp_version": 2, "auth_pass": "s3cret"}),
    Case("auth on VRRPv3",
         {"node1": [("    advert_int 1\n", "    advert_int 1\n    authentication {\n"
                     "        auth_type PASS\n        auth_pass abc\n    }\n")]},
         [("node1", "authentication {", "auth-ignored-v3"),
          ("node1", "authentication {", "auth-mismatch")]),
    Case("track_script names nothing",
         {"node1": [("    track_script {\n        gateway_check",
                     "    track_script {\n        gateway_chek")]},
         [("node1", "gateway_chek", "unknown-track-script")]),
    Case("track_file names nothing",
         {"node1": [("    track_file {\n        gateway_check",
                     "    track_file {\n        gateway_chek")]},
         [("node1", "gateway_chek", "unknown-track-file")],
         {"check": {"mode": "track_file"}}),
    Case("no check tracked",
         {"node1": [("    track_script {\n        gateway_check\n    }\n", "")]},
         [("node1", "vrrp_instance gateway", "no-check")]),
    Case("negative weight too small", {n: [("    weight 0 ", "    weight -5 ")] for n in NODES},
         [("node1", "weight -5", "weight-too-small"), ("node2", "weight -5", "weight-too-small")]),
    Case("track_file weight raises priority",
         {n: [("    weight 0\n", "    weight 1\n")] for n in NODES},
         [("node1", "weight 1", "weight-too-small"), ("node2", "weight 1", "weight-too-small")],
         {"check": {"mode": "track_file"}}),
    Case("advert_int differs", {"node3": [("advert_int 1", "advert_int 2")]},
         [("node3", "advert_int 2", "advert-int-mismatch")]),
    Case("version differs", {"node2": [("version 3", "version 2")]},
         [("node2", "version 2", "version-mismatch")]),
    Case("vrrp_strict", {"node1": [("    enable_script_security\n",
                                    "    enable_script_security\n    vrrp_strict\n")]},
         [("node1", "vrrp_strict", "strict-drops-vip")]),
    Case("different VIP", {"node2": [("192.0.2.100/24", "192.0.2.101/24")]},
         [("node2", "virtual_ipaddress {", "vip-mismatch")]),
    Case("unicast peer missing", {"node1": [("        192.0.2.13\n", "")]},
         [("node1", "unicast_peer {", "unicast-peer-missing")], {"unicast": True}),
    Case("unclosed block", {"node2": [('"\n}\n', '"\n')]},
         [("node2", "vrrp_instance gateway", "parse-error")]),
    Case("no script security", {"node1": [("    enable_script_security\n", "")]},
         [("node1", "global_defs {", "script-security-off")]),
    Case("script user missing", {"node1": [("script_user USER", "script_user nosuchuser0")]},
         [("node1", 'script "', "script-user-missing"),
          ("node1", "notify ", "script-user-missing")]),
    Case("script missing", {"node1": [("BIN/gateway-check --http", "BIN/missing --http")]},
         [("node1", 'script "', "script-missing")]),
    Case("script not executable",
         {"node1": [("BIN/gateway-check --http", "BIN/not-executable --http")]},
         [("node1", 'script "', "script-not-executable")]),
    Case("script interpreter missing",
         {"node1": [("BIN/gateway-check --http", "BIN/no-interpreter --http")]},
         [("node1", 'script "', "script-not-executable")]),
    Case("venv python symlink",
         {"node1": [("BIN/gateway-check --http", "VENV/bin/python -m agent.check --http")]},
         [("node1", 'script "', "script-venv-python")]),
    Case("script writable by others",
         {"node1": [("BIN/gateway-check --http", "OPEN/gateway-check --http"),
                    ("script_user USER", "script_user root")]},
         [("node1", 'script "', "script-insecure")]),
]


@pytest.fixture
def machine(tmp_path: Path) -> dict[str, str]:
    """Scripts on this machine for the rendered configs to name: good ones and bad ones."""
    bin_dir = tmp_path / "bin"
    executable(bin_dir / "gateway-check")
    executable(bin_dir / "notify")
    executable(bin_dir / "not-executable", mode=0o644)
    executable(bin_dir / "no-interpreter", "#!/nonexistent/python3\n")
    venv = tmp_path / "venv"
    executable(venv / "real-python")
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (venv / "bin").mkdir()
    (venv / "bin" / "python").symlink_to(venv / "real-python")
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)  # writable by anyone, and no sticky bit
    executable(open_dir / "gateway-check")
    return {"BIN": str(bin_dir), "VENV": str(venv), "OPEN": str(open_dir),
            "USER": pwd.getpwuid(os.getuid()).pw_name}


def render_case(case: Case, machine: dict[str, str], folder: Path) -> dict[str, Path]:
    data: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    changes = dict(case.cluster)
    data["check"].update({"mode": "script", "command": f"{machine['BIN']}/gateway-check",
                          **changes.pop("check", {})})
    data.update(script_user=machine["USER"], notify=f"{machine['BIN']}/notify", **changes)
    cluster = cluster_from_dict(data)
    folder.mkdir()
    paths = {}
    for node in NODES:
        text = render_node(cluster, node)
        for old, new in case.edits.get(node, []):
            old, new = (s.replace("BIN", machine["BIN"]).replace("USER", machine["USER"])
                        .replace("VENV", machine["VENV"]).replace("OPEN", machine["OPEN"])
                        for s in (old, new))
            assert old in text, f"{case.id}: {old!r} is not in {node}'s config"
            text = text.replace(old, new)
        paths[node] = folder / f"{node}.conf"
        paths[node].write_text(text)
    return paths


def line_of(path: Path, marker: str) -> int:
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if marker in line and not line.lstrip().startswith("#"):
            return number
    raise AssertionError(f"{marker!r} is not in {path}")


def test_the_unplanted_configs_are_clean(machine: dict[str, str], tmp_path: Path) -> None:
    for mode in ("script", "track_file"):
        case = Case("clean", {}, [], {"check": {"mode": mode}})
        paths = render_case(case, machine, tmp_path / mode)
        assert lint_files(list(paths.values())) == []


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_each_planted_mistake_is_found(case: Case, machine: dict[str, str],
                                       tmp_path: Path) -> None:
    if case.id == "script writable by others":
        require_root()  # the rule is about root-owned paths: as another user every file fails it
    paths = render_case(case, machine, tmp_path / "configs")
    found = {(Path(f.file).stem, f.line, f.code) for f in lint_files(list(paths.values()))}
    expected = {(node, line_of(paths[node], marker), code)
                for node, marker, code in case.expected}
    assert found == expected


def test_the_article_config_is_flagged_for_each_mistake() -> None:
    files = sorted(ARTICLE.glob("node*.conf"))
    findings = lint_files(files)
    by_code: dict[str, set[str]] = {}
    for finding in findings:
        by_code.setdefault(finding.code, set()).add(Path(finding.file).stem)
    assert by_code == {
        # "virtual_router_id: every node should be different": they are then three routers
        "vrid-mismatch": {"node2", "node3"},
        # "lower value will become master": the highest wins, so the MASTERs with lower
        # priorities than node2 hand the VIP over as soon as node2 speaks
        "master-not-highest": {"node1", "node3"},
        # YOUR_RANDOM_PASSWORD is 20 characters; keepalived uses 8
        "auth-pass-truncated": {"node1", "node2", "node3"},
        # nothing watches nginx: the VIP stays on a node whose gateway is dead
        "no-check": {"node1", "node2", "node3"},
    }
    vrid = next(f for f in findings if f.code == "vrid-mismatch")
    assert "SAME id" in vrid.message


def test_cli_lint_output_and_exit_codes(machine: dict[str, str], tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    def lint(*argv: str) -> int:
        parser = argparse.ArgumentParser()
        register(parser.add_subparsers())
        args = parser.parse_args(["keepalived", "lint", *argv])
        return int(args.func(args))

    clean = render_case(Case("clean", {}, []), machine, tmp_path / "clean")
    assert lint(*map(str, clean.values())) == 0
    assert capsys.readouterr().out == ""
    files = [str(p) for p in sorted(ARTICLE.glob("node*.conf"))]
    assert lint(*files) == 1
    out = capsys.readouterr()
    first = out.out.splitlines()[0]
    assert first.startswith(f"{files[0]}:6: no-check: ")
    assert "10 problem(s) in 3 file(s)" in out.err
    missing = render_case(Case("missing", {"node1": [("BIN/gateway-check --http",
                                                      "BIN/missing --http")]}, []),
                          machine, tmp_path / "missing")
    assert lint("--skip-files", *map(str, missing.values())) == 0
