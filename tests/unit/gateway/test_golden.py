"""Golden files of the renderer: each folder of golden/ holds the inputs of one case (routes.yml,
endpoints.json, the flags in `args`, and the files those flags name) and `expected.conf`, the
whole configuration `gateway-agent render` prints for them (the http context, then the stream
context when there is one).

A change of the renderer shows as a diff of these files. After a change you mean, write them
again with `pytest tests/unit/gateway/test_golden.py --update-golden` and review the diff.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from agent.cli import main

GOLDEN = Path(__file__).parent / "golden"
CASES = sorted(p.name for p in GOLDEN.iterdir() if (p / "routes.yml").is_file())
# the temporary folder `render` copies certificates and route files into
_RENDER_TMP = re.compile(r"/[^\s;'\"]*/gateway-render-[A-Za-z0-9_]+")
# nginx serves the generation, a digest of the configuration: of that folder's name too
_GENERATION = re.compile(r'(location = /generation \{\n\s*return 200 ")([0-9a-f]{16})')


def render_case(case: Path, capsys: pytest.CaptureFixture[str],
                monkeypatch: pytest.MonkeyPatch) -> str:
    """What `gateway-agent render` prints for this case, its own paths written as @CASE@ (and
    where it copied files to, @RENDER_TMP@; then the generation too, which digests that)."""
    import os

    for name in list(os.environ):
        if name.startswith("GATEWAY_"):
            monkeypatch.delenv(name)
    # the listen backlog follows the machine's net.core.somaxconn: pinned, as on these machines
    monkeypatch.setattr("agent.gateway.pipeline.listen_backlog", lambda: 4096)
    args = shlex.split((case / "args").read_text(encoding="utf-8").replace("@CASE@", str(case)))
    code = main(["render", "--routes", str(case / "routes.yml"),
                 "--endpoints", str(case / "endpoints.json"), *args])
    out, err = capsys.readouterr()
    assert code == 0, err
    text, copies = _RENDER_TMP.subn("@RENDER_TMP@", out.replace(str(case), "@CASE@"))
    return _GENERATION.sub(r"\1@GENERATION@", text) if copies else text


def test_every_case_has_its_expected_configuration(request: pytest.FixtureRequest) -> None:
    assert CASES, GOLDEN
    if request.config.getoption("--update-golden"):
        return
    missing = [c for c in CASES if not (GOLDEN / c / "expected.conf").is_file()]
    assert missing == [], "write them with --update-golden"


@pytest.mark.parametrize("name", CASES)
def test_rendering_matches_the_golden_file(name: str, capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch,
                                           request: pytest.FixtureRequest) -> None:
    case = GOLDEN / name
    text = render_case(case, capsys, monkeypatch)
    expected = case / "expected.conf"
    if request.config.getoption("--update-golden"):
        expected.write_text(text, encoding="utf-8")
    assert expected.read_text(encoding="utf-8") == text, (
        f"{name}: the configuration differs from golden/{name}/expected.conf; if the change is "
        "meant, run pytest with --update-golden and review the diff")
