"""The one YAML loader: safe, and strict about what YAML would let pass silently.

YAML keeps the last of two equal keys without a word; a routes file or a cluster file must not
(a second `port:` would win unseen). Errors name the line and column, on one line.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import yaml


class YamlError(ValueError):
    """Text that is not YAML the programs take; the message names the line and column."""


class _UniqueKeyLoader(yaml.SafeLoader):
    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        keys: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):  # `? {a: 1}` makes a mapping a key
                raise yaml.constructor.ConstructorError(
                    None, None, f"a key cannot be a {type(key).__name__}", key_node.start_mark)
            if key in keys:
                mark = key_node.start_mark
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (line {mark.line + 1})", mark)
            keys[key] = True
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> Any:
    """The document in `text` (None for an empty one). Raises YamlError."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1} column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        if isinstance(exc, yaml.reader.ReaderError):  # a control character: a position, no mark
            line = text.count("\n", 0, exc.position) + 1
            column = exc.position - text.rfind("\n", 0, exc.position)
            where = f"line {line} column {column}: "
            problem = f"unacceptable character #x{exc.character:04x}: {exc.reason}"
        problem = " ".join(str(problem).split())  # one line, whatever the parser said
        raise YamlError(f"{where}invalid YAML: {problem}") from None
