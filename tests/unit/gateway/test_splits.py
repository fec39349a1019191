"""The shares nginx draws by `split_clients` (canary, mirror, trace sampling) are independent:
each hashes its own key. On one key, a 10 % mirror copied exactly the 10 % canary's requests,
and every sampled trace was a canary's."""

from __future__ import annotations

import re
from pathlib import Path

import agent.gateway

GOLDEN = Path(__file__).parent / "golden"
TEMPLATE = Path(agent.gateway.__file__).parent / "templates" / "gateway.conf.j2"
SPLIT = re.compile(r'^split_clients "([^"]*)"', re.M)


def test_each_kind_of_split_hashes_a_key_of_its_own() -> None:
    keys = SPLIT.findall(TEMPLATE.read_text())
    assert len(keys) == 3, keys  # canary, mirror, trace sampling
    assert len(set(keys)) == len(keys), keys


def test_a_canary_and_a_mirror_as_rendered_hash_different_keys() -> None:
    text = (GOLDEN / "traffic" / "expected.conf").read_text()
    canary = re.findall(r'^split_clients "([^"]*)" \$\S+_split \{', text, re.M)
    mirror = re.findall(r'^# mirror: .*\nsplit_clients "([^"]*)"', text, re.M)
    assert canary, "the traffic case has a canary"
    assert mirror, "the traffic case has a mirror"
    assert not set(canary) & set(mirror)
