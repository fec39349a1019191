"""Every test of a tier carries the tier's marker, so `-m` selects tiers as the README says."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TIERS = ("integration", "keepalived", "swarm", "cluster")

# One collection of every tier (a pytest start costs seconds): each test's folder and markers.
COLLECT = """
import json, sys
import pytest

class Markers:
    def __init__(self):
        self.found = []

    def pytest_collection_finish(self, session):  # after every hook that adds markers
        self.found = [(i.nodeid, sorted({m.name for m in i.iter_markers()}))
                      for i in session.items]

markers = Markers()
code = pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", "-m", "",
                    *sys.argv[1:]], plugins=[markers])
print("MARKERS " + json.dumps(markers.found))
sys.exit(int(code))
"""


def test_every_test_of_a_tier_is_marked_with_it() -> None:
    out = subprocess.run([sys.executable, "-c", COLLECT, *(f"tests/{t}" for t in TIERS)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    (line,) = [x for x in out.stdout.splitlines() if x.startswith("MARKERS ")]
    found: list[tuple[str, list[str]]] = json.loads(line.removeprefix("MARKERS "))
    for tier in TIERS:
        tests = [(nodeid, marks) for nodeid, marks in found if nodeid.startswith(f"tests/{tier}/")]
        assert tests, f"no test collected in tests/{tier}"
        unmarked = [nodeid for nodeid, marks in tests if tier not in marks]
        assert unmarked == [], f"tests of tests/{tier} without the {tier} marker: {unmarked}"
