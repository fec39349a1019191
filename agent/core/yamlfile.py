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

Speed: at 10,000 routes the pure-Python parser takes seconds, on every change of the routes
file. libyaml's parser (PyYAML's CSafeLoader; the constructor stays this one) takes a fifth of
that. It reads a document without an alias, a tab or a byte-order mark (every routes file in
practice) to what the careful loader gives (tests/unit/core/test_yamlfile.py compares the two on
generated texts). A document it refuses, one with an alias, a tab or a byte-order mark (where
the two parsers differ), or one with a character the careful reader refuses is read again by
the careful loader, so that what is refused and how the error reads stay its own. libyaml
takes a few texts the pure-Python scanner refuses (`key: |#`, a comment right after a block
scalar's indicator); it reads none differently.
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


class _UniqueKeys(yaml.constructor.SafeConstructor):
    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        """PyYAML's, with a value its constructors fail on (`!!int` of nothing, a 13th month)
        refused at its place: they raise what they raise (IndexError, ValueError, ...). The
        value is not repeated (it may be a secret: the cluster file's password)."""
        try:
            return super().construct_object(node, deep=deep)
        except yaml.YAMLError:
            raise
        except (ValueError, TypeError, IndexError, AttributeError, OverflowError):
            tag = str(node.tag).replace("tag:yaml.org,2002:", "!!")
            raise yaml.constructor.ConstructorError(
                None, None, f"not a valid {tag} value (quote it to make it a string)",
                node.start_mark) from None

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


if yaml.__with_libyaml__:  # (PyYAML's wheels have it; built from source without, they don't)
    class _FastLoader(_UniqueKeys, yaml.CSafeLoader):
        """libyaml's parser and composer, the careful loader's constructor."""


class _UniqueKeyLoader(_UniqueKeys, yaml.SafeLoader):
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


_NOT_READ = object()  # the fast path declines: the careful loader reads the text


def _no_alias(root: yaml.Node) -> bool:
    """No node of the document is reached twice (an alias, or a structure that contains
    itself)."""
    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            return False
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            stack.extend(part for pair in node.value for part in pair)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
    return True


def _load_fast(text: str) -> Any:
    """The document as the careful loader would give it, or _NOT_READ."""
    if not yaml.__with_libyaml__:
        return _NOT_READ
    # a tab: libyaml takes some the pure-Python scanner refuses (`routes:\t`); a byte-order
    # mark: the two read one inside the text differently; a character the careful reader
    # refuses: its error names it
    if "\t" in text or "\ufeff" in text or yaml.reader.Reader.NON_PRINTABLE.search(text):
        return _NOT_READ
    loader = _FastLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        # an alias needs an anchor, written with '&': a text without one has none (an alias
        # of no anchor is an error of the composer's), and is not walked
        if "&" in text and not _no_alias(root):
            return _NOT_READ
        return loader.construct_document(root)
    except yaml.YAMLError:
        return _NOT_READ
    finally:
        loader.dispose()


def load_yaml(text: str) -> Any:
    """The document in `text` (None for an empty one). Raises YamlError."""
    document = _load_fast(text)
    if document is not _NOT_READ:
        return document
    return load_yaml_carefully(text)


def load_yaml_carefully(text: str) -> Any:
    """load_yaml() by the pure-Python parser alone."""
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
