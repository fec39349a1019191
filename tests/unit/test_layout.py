"""The layout is the architecture: what both programs trust lives in agent/core, and neither
program imports the other's modules (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

AGENT = Path(__file__).resolve().parents[2] / "agent"
# folder -> the agent packages its modules may import (besides their own folder)
ALLOWED = {
    "core": set(),
    "gateway": {"core"},
    "controller": {"core"},
    "keepalived": {"core"},
    "check": set(),  # standard library only: keepalived starts it every second
}


def agent_imports(path: Path) -> set[str]:
    """The agent packages a module imports (`agent.core.routes` -> `core`), lazy imports too."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "agent" and len(parts) > 1 and parts[1] in ALLOWED:
                found.add(parts[1])
    return found


@pytest.mark.parametrize("folder", sorted(ALLOWED))
def test_each_program_imports_only_the_core(folder: str) -> None:
    modules = sorted((AGENT / folder).rglob("*.py"))
    assert modules, folder
    wrong = {str(m.relative_to(AGENT)): sorted(agent_imports(m) - ALLOWED[folder] - {folder})
             for m in modules}
    assert {m: w for m, w in wrong.items() if w} == {}


def test_the_check_imports_nothing_outside_the_standard_library() -> None:
    import sys

    for module in sorted((AGENT / "check").rglob("*.py")):
        for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                tops = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                tops = [node.module.split(".")[0]]
            else:
                continue
            outside = [t for t in tops if t not in sys.stdlib_module_names and t != "agent"]
            assert not outside, (module.name, outside)


def test_no_module_is_longer_than_one_sitting() -> None:
    """A few hundred lines at most (STYLE.md); 480 leaves room around 'about 400'."""
    long = {str(p.relative_to(AGENT)): n for p in AGENT.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 480}
    assert long == {}
