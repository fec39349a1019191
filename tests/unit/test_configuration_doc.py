"""docs/configuration.md's tables of flags against the programs' options: every flag has its
row, with its environment variable, and no row names a flag that is gone (as test_monitoring.py
keeps docs/metrics.md to the metrics)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agent.controller.settings import OPTIONS as CONTROLLER
from agent.core.settings import Option, env_name
from agent.gateway.settings import OPTIONS as GATEWAY

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
HEADER = "| flag | variable | default | |"
FLAG = re.compile(r"`(--[a-z0-9-]+)")
VARIABLE = re.compile(r"`(GATEWAY_[A-Z0-9_]+)`")


def tables() -> list[list[str]]:
    """The rows of each flags table, in the order of the document (a table ends at the first
    line that is not a row: markdown shows nothing after it as the table)."""
    lines = DOC.read_text(encoding="utf-8").splitlines()
    found = []
    for i, line in enumerate(lines):
        if line.strip() == HEADER:
            rows = []
            for row in lines[i + 2:]:
                if not row.startswith("|"):
                    break
                rows.append(row)
            found.append(rows)
    return found


def documented(rows: list[str]) -> dict[str, set[str]]:
    """flag -> the variables its row names (a row may give two flags: `--log-format`,
    `--log-level`)."""
    out: dict[str, set[str]] = {}
    for row in rows:
        cells = row.split(" | ")
        for flag in FLAG.findall(cells[0]):
            out[flag] = set(VARIABLE.findall(cells[1]))
    return out


@pytest.mark.parametrize(("program", "options", "index"), [
    ("gateway-agent run", GATEWAY, 0), ("gateway-agent controller", CONTROLLER, 1)])
def test_every_flag_has_its_row_with_its_variable(program: str, options: tuple[Option, ...],
                                                  index: int) -> None:
    assert len(tables()) == 2, f"{DOC}: the flags tables of run and controller"
    rows = documented(tables()[index])
    flags = {o.flag for o in options}
    assert sorted(flags - set(rows)) == [], f"{program}: flags without a row"
    assert sorted(set(rows) - flags) == [], f"{program}: rows of flags it does not have"
    wrong = {f: sorted(v) for f, v in rows.items() if env_name(f) not in v}
    assert wrong == {}, f"{program}: rows whose variable is not the flag's"
