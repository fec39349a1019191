"""The fast path of core/yamlfile.py (libyaml's parser) gives what the careful pure-Python
loader gives: the same document, or the same refusal in the same words, for the project's own
YAML files and for texts made of YAML's own pieces (where libyaml is more lenient, it may read a
text the careful loader refuses; never another document)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.core import yamlfile
from agent.core.yamlfile import YamlError, load_yaml, load_yaml_carefully

ROOT = Path(__file__).resolve().parents[3]


def outcome(load: Any, text: str) -> tuple[str, str]:
    """(kind, what): the document's repr, or the error's type and message."""
    try:
        return "document", repr(load(text))
    except YamlError as exc:
        return "refused", str(exc)
    except (ValueError, TypeError, RecursionError) as exc:  # (a timestamp out of range, ...)
        return type(exc).__name__, ""


def yaml_files() -> list[Path]:
    files = [p for folder in ("stacks", "deploy", "examples", "tests")
             for p in sorted((ROOT / folder).rglob("*.y*ml")) if p.is_file()]
    assert len(files) > 10, files
    return files


def test_the_fast_path_reads_the_project_s_own_files_as_the_careful_loader_does() -> None:
    read = 0
    for path in yaml_files():
        text = path.read_text(errors="replace")
        if "{{" in text:  # (a template, not YAML yet)
            continue
        assert outcome(load_yaml, text) == outcome(load_yaml_carefully, text), path
        read += 1
    assert read > 10


def test_a_routes_file_of_thousands_of_routes_is_read_by_libyaml(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast path is taken (the careful loader is not called) and gives the same routes."""
    text = "routes:\n" + "".join(
        f"  - hosts: [h{i}.example.com]\n    service: s{i % 100}\n    port: 8080\n"
        f"    headers: {{request: {{X-Route: \"{i}\"}}}}\n" for i in range(3000))
    expected = load_yaml_carefully(text)
    calls: list[str] = []
    monkeypatch.setattr(yamlfile, "load_yaml_carefully",
                        lambda t: calls.append(t) or load_yaml_carefully(t))
    assert load_yaml(text) == expected
    assert calls == []
    # an alias, a duplicate key: the careful loader reads them, and says what it says
    assert load_yaml("a: &x [1]\nb: *x\n") == {"a": [1], "b": [1]}
    with pytest.raises(YamlError, match=r"duplicate key 'a' \(line 2\)"):
        load_yaml("a: 1\na: 2\n")
    assert len(calls) == 2


PIECES = [
    "routes:", "\n", "\n  ", "\n    ", "  ", " ", "- ", "-", ": ", ":", "? ", "[", "]", "{", "}",
    ", ", ",", "&a ", "*a", "&b ", "*b", "!!str ", "!!int ", "!!binary ", "!!python/tuple ",
    "!custom ", "'", '"', "\\", "#", "|", ">", "|-", "---", "...", "%YAML 1.1\n", "\t",
    "hosts", "a", "b", "1", "0x1F", "0o17", "1_000", "1e3", ".inf", "-.nan", "~", "null",
    "yes", "No", "on", "2001-12-14", "2001-13-45", "12:30:45", "<<", "=", "é", "\u2028",
    "\x85", "\ufeff", "\x07", "\r", "\r\n", "%",
]


@settings(max_examples=1500, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(st.lists(st.sampled_from(PIECES), max_size=40).map("".join))
def test_texts_of_yaml_s_own_pieces_read_alike_both_ways(text: str) -> None:
    """A text the careful loader reads is read to the same document; one it refuses is refused
    in the same words, or read by libyaml, which takes some texts the pure-Python scanner
    refuses (`|#`: a comment right after a block scalar's indicator)."""
    fast, careful = outcome(load_yaml, text), outcome(load_yaml_carefully, text)
    if careful[0] == "document" or fast[0] != "document":
        assert fast == careful


def test_libyaml_is_there() -> None:
    """The image and the tests install PyYAML with libyaml; without it the careful loader
    would read everything (correct, five times slower at thousands of routes)."""
    assert yaml.__with_libyaml__


def test_a_text_without_an_anchor_is_read_fast_and_an_alias_of_none_is_refused() -> None:
    """The fast path walks a document for aliases only when the text writes an anchor ('&'):
    an alias needs one. An alias of no anchor is still an error, and a wildcard host's '*'
    inside a string is no alias."""
    assert load_yaml('routes:\n  - hosts: ["*.a.example"]\n') == {
        "routes": [{"hosts": ["*.a.example"]}]}
    with pytest.raises(YamlError, match="undefined alias"):
        load_yaml("a: *x\n")
    with pytest.raises(YamlError, match="contains itself"):
        load_yaml("a: &x [1, *x]\n")
