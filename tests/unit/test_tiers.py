"""Every test of a tier carries the tier's marker, so `-m` selects tiers as the README says."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("tier", ["integration", "keepalived", "swarm", "cluster"])
def test_every_test_of_a_tier_is_marked_with_it(tier: str) -> None:
    def collected(marker: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
             "-m", marker, f"tests/{tier}"], cwd=ROOT, capture_output=True, text=True,
            timeout=120)
        return out.stdout.strip().splitlines()[-1]

    unmarked = collected(f"not {tier}")
    found = re.fullmatch(r"no tests collected \((\d+) deselected\) in .*", unmarked)
    assert found, unmarked
    marked = collected(tier)
    assert re.fullmatch(rf"{found.group(1)} tests? collected in .*", marked), (unmarked, marked)
    assert int(found.group(1)) > 0
