"""The one YAML loader: safe, and strict about what YAML would let pass silently.

YAML keeps the last of two equal keys without a word; a routes file or a cluster file must not
(a second `port:` would win unseen). Errors name the line and column, on one line.

An alias repeats what its anchor holds, and aliases of aliases multiply it: 500 bytes of nested
aliases ("billion laughs") are 9**9 values once a reader walks them, which costs minutes and
gigabytes to whatever reads the document next (the model, an error message quoting a value).
The loader counts, while it composes, how many nodes the aliases add once expanded, and refuses
a document where they add more than the file writes plus ALIAS_NODES. An alias inside its own
anchor (a structure that contains itself) is refused too. Composing stays as cheap as the text:
an alias is one shared node, only its size is counted.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import yaml


class YamlError(ValueError):
    """Text that is not YAML the programs take; the message names the line and column."""


# what aliases may add beyond the nodes the file writes (anchors of defaults merged into every
# route add about as much as they take to write)
ALIAS_NODES = 10_000


class _UniqueKeyLoader(yaml.SafeLoader):
    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._sizes: dict[int, int] = {}  # id(node) -> its nodes with every alias expanded
        self._written = 0  # nodes the text writes
        self._aliased = 0  # nodes the aliases add

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        alias = self.check_event(yaml.AliasEvent)
        node = super().compose_node(parent, index)
        if node is None:
            return None
        if alias:  # the anchor's node (an error names the anchor's place)
            size = self._sizes.get(id(node))
            if size is None:  # not finished: the alias is inside it
                raise yaml.composer.ComposerError(
                    None, None, "an alias of this anchor inside it: a structure that "
                    "contains itself", node.start_mark)
            self._aliased += size
            if self._aliased > self._written + ALIAS_NODES:
                raise yaml.composer.ComposerError(
                    None, None, f"aliases repeat more than the file holds ({self._written} "
                    f"nodes written, {self._aliased} more through aliases, at most "
                    f"{ALIAS_NODES} more than written): refused as an alias bomb",
                    node.start_mark)
            return node
        self._written += 1
        children: list[yaml.Node] = []
        if isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = node.value
        self._sizes[id(node)] = 1 + sum(self._sizes[id(child)] for child in children)
        return node

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
