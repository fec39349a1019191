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


# -- inside the gateway: what each part may do (docs/architecture.md) ---------------------------

GATEWAY = AGENT / "gateway"
# libraries that do I/O (network, DNS, certificates' files, metrics' exposition, C calls)
IO_LIBRARIES = {"aiodns", "pycares", "cryptography", "prometheus_client", "aiohttp", "ctypes",
                "dns", "socket", "subprocess", "asyncio", "ssl", "select", "selectors", "os",
                "shutil", "tempfile", "pwd", "urllib.request", "http"}
PURE = ("model.py", "plan")  # the values, and what is decided from them


def imports(path: Path) -> set[str]:
    """Every module `path` imports, by its full name (lazy and TYPE_CHECKING imports too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def module_name(path: Path) -> str:
    parts = path.relative_to(AGENT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in AGENT.rglob("*.py")}


def in_part(path: Path, part: str) -> bool:
    return path.relative_to(GATEWAY).parts[0] == part


@pytest.mark.parametrize("part", PURE)
def test_the_plan_and_the_values_import_only_the_core_and_each_other(part: str) -> None:
    modules = [GATEWAY / part] if part.endswith(".py") else sorted((GATEWAY / part).rglob("*.py"))
    assert modules, part
    wrong = {}
    for module in modules:
        bad = sorted(
            name for name in imports(module)
            if (name.startswith("agent.") and name in MODULES and not name.startswith((
                "agent.core", "agent.gateway.model", "agent.gateway.plan")))
            or name.split(".")[0] in IO_LIBRARIES or name in IO_LIBRARIES)
        if bad:
            wrong[str(module.relative_to(AGENT))] = bad
    assert wrong == {}


def test_no_part_of_the_gateway_imports_the_orchestration() -> None:
    """drivers/ and observe/ are used by the reconciler (and the daemon, the command line);
    they never use it, nor does the status view use a driver (it shows values)."""
    top = {"agent.gateway.reconciler", "agent.gateway.daemon", "agent.gateway.cli",
           "agent.gateway.pipeline"}
    wrong = {}
    for module in sorted(GATEWAY.rglob("*.py")):
        if module.parent == GATEWAY:
            continue
        bad = sorted(imports(module) & top)
        if in_part(module, "observe") and module.name in ("state.py", "certs.py", "metrics.py"):
            bad += sorted(n for n in imports(module) if n.startswith("agent.gateway.drivers"))
        if bad:
            wrong[str(module.relative_to(AGENT))] = bad
    assert wrong == {}


def test_no_import_cycle_in_the_agent() -> None:
    """Not even one hidden by an import inside a function (there were two, core/routes ->
    merge -> routes and routes -> tcp -> routes, before issue #25)."""
    graph = {name: {n for n in imports(path) if n in MODULES and n != name}
             for name, path in MODULES.items()}
    cycles = []
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for nxt in sorted(graph[name]):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_no_module_is_longer_than_one_sitting() -> None:
    """A few hundred lines at most (STYLE.md), generously: the layout is kept by the import
    rules above, not by splitting modules for size."""
    long = {str(p.relative_to(AGENT)): n for p in AGENT.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 600}
    assert long == {}
