"""Read keepalived.conf into statements with file and line, and a typed view of the VRRP parts.

The grammar is keepalived's: one statement a line, `{` at the end of a line opens a block that a
`}` closes, `#` and `!` start comments, double quotes group words, a trailing backslash continues
a line, `include GLOB` pulls in other files (relative to the including file), `$NAME=value`
defines a word that `$NAME` or `${NAME}` then stands for, and a line starting `@ID` counts only
for keepalived started with that config id (`@^ID`: all but that id).

The view (`read_config`) keeps what lint needs: global_defs, vrrp_script and track_file blocks,
and vrrp_instance blocks, each value with the line it came from. Both lint and the tests of
render read configuration through it.
"""

from __future__ import annotations

import glob
import re
from dataclasses import dataclass, field
from pathlib import Path


class ConfigError(ValueError):
    """A file that cannot be read as keepalived configuration, with the place that says so."""

    def __init__(self, file: str, line: int, message: str) -> None:
        super().__init__(f"{file}:{line}: {message}" if line else f"{file}: {message}")
        self.file, self.line, self.message = file, line, message


@dataclass
class Statement:
    keyword: str
    args: list[str]
    file: str
    line: int
    children: list[Statement] | None = None  # None: a plain statement, not a block

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"

    def all(self, keyword: str) -> list[Statement]:
        return [s for s in self.children or [] if s.keyword == keyword]

    def first(self, keyword: str) -> Statement | None:
        found = self.all(keyword)
        return found[0] if found else None

    def arg(self, index: int = 0, default: str | None = None) -> str | None:
        return self.args[index] if index < len(self.args) else default


_DEFINITION = re.compile(r"^\$([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$")
_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def _split(text: str, file: str, line: int) -> list[str]:
    """Words of one line: quotes group, `#`/`!` outside quotes end the line, braces stand alone."""
    words: list[str] = []
    current: list[str] = []
    quoted = False
    in_word = False
    for ch in text:
        if quoted:
            if ch == '"':
                quoted = False
            else:
                current.append(ch)
            continue
        if ch == '"':
            quoted = in_word = True
        elif ch in "#!":
            break
        elif ch in "{}":
            if in_word:
                words.append("".join(current))
            current, in_word = [], False
            words.append(ch)
        elif ch.isspace():
            if in_word:
                words.append("".join(current))
            current, in_word = [], False
        else:
            current.append(ch)
            in_word = True
    if quoted:
        raise ConfigError(file, line, "unclosed quote")
    if in_word:
        words.append("".join(current))
    return words


def _logical_lines(path: Path, shown: str) -> list[tuple[int, str]]:
    """(first line number, text) with backslash continuations joined."""
    try:
        raw = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise ConfigError(shown, 0, f"cannot read: {exc.strerror}") from None
    lines: list[tuple[int, str]] = []
    pending: list[str] = []
    start = 0
    for number, text in enumerate(raw, 1):
        if not pending:
            start = number
        if text.rstrip().endswith("\\"):
            pending.append(text.rstrip()[:-1])
            continue
        pending.append(text)
        lines.append((start, " ".join(pending)))
        pending = []
    if pending:
        lines.append((start, " ".join(pending)))
    return lines


@dataclass
class _Reader:
    top: str  # the top file's name as given: findings use it
    config_id: str | None
    definitions: dict[str, str] = field(default_factory=dict)
    seen: set[Path] = field(default_factory=set)

    def words(self, path: Path) -> list[tuple[str, int, list[str]]]:
        """(file, line, words) for every non-empty line of `path` and what it includes."""
        shown = self.top if not self.seen else str(path)
        path = path.resolve()
        if path in self.seen:
            raise ConfigError(shown, 0, "included twice (an include loop?)")
        self.seen.add(path)
        out: list[tuple[str, int, list[str]]] = []
        for number, text in _logical_lines(path, shown):
            stripped = text.strip()
            if stripped.startswith("@"):
                tag, _, rest = stripped.partition(" ")
                negated = tag.startswith("@^")
                ident = tag[2:] if negated else tag[1:]
                if (ident == self.config_id) == negated:
                    continue
                stripped = rest
            definition = _DEFINITION.match(stripped)
            if definition:
                self.definitions[definition.group(1)] = definition.group(2)
                continue
            stripped = _REFERENCE.sub(self._substitute, stripped)
            words = _split(stripped, shown, number)
            if not words:
                continue
            if words[0] == "include":
                for arg in words[1:]:
                    pattern = arg if arg.startswith("/") else str(path.parent / arg)
                    for included in sorted(glob.glob(pattern)):
                        out.extend(self.words(Path(included)))
                continue
            out.append((shown, number, words))
        return out

    def _substitute(self, match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return self.definitions.get(name, match.group(0))


def parse(path: str | Path, config_id: str | None = None) -> list[Statement]:
    """The top-level statements of a configuration file (includes resolved)."""
    root: list[Statement] = []
    stack: list[list[Statement]] = [root]
    opened: list[Statement] = []
    for file, line, words in _Reader(str(path), config_id).words(Path(path)):
        while words:
            if words[0] == "}":
                if len(stack) == 1:
                    raise ConfigError(file, line, "'}' without a block to close")
                stack.pop()
                opened.pop()
                words = words[1:]
                continue
            if words[0] == "{":
                # a block opened on its own line belongs to the statement above it
                siblings = stack[-1]
                if not siblings or siblings[-1].children is not None:
                    raise ConfigError(file, line, "'{' without a statement to open")
                siblings[-1].children = []
                stack.append(siblings[-1].children)
                opened.append(siblings[-1])
                words = words[1:]
                continue
            cut = next((i for i, w in enumerate(words) if w in "{}"), len(words))
            statement = Statement(words[0], words[1:cut], file, line)
            stack[-1].append(statement)
            words = words[cut:]
            if words and words[0] == "{":
                statement.children = []
                stack.append(statement.children)
                opened.append(statement)
                words = words[1:]
    if opened:
        raise ConfigError(opened[-1].file, opened[-1].line,
                          f"block '{opened[-1].keyword}' is never closed")
    return root


# --- the typed view ---------------------------------------------------------------------------


@dataclass
class Tracked:
    """One entry of a track_script/track_file block: the name, an explicit weight if given."""

    name: str
    weight: int | None
    reverse: bool
    statement: Statement


@dataclass
class VrrpScript:
    name: str
    statement: Statement
    script: str | None
    weight: int  # keepalived's default is 0
    user: str | None

    @property
    def weight_statement(self) -> Statement:
        return self.statement.first("weight") or self.statement


@dataclass
class TrackFile:
    name: str
    statement: Statement
    file: str | None
    weight: int  # keepalived's default is 1


@dataclass
class Instance:
    name: str
    statement: Statement
    file: str

    def value(self, keyword: str) -> Statement | None:
        return self.statement.first(keyword)

    def int_value(self, keyword: str) -> int | None:
        found = self.value(keyword)
        try:
            return int(found.args[0]) if found and found.args else None
        except ValueError:
            return None

    @property
    def state(self) -> str | None:
        found = self.value("state")
        return found.args[0].upper() if found and found.args else None

    @property
    def priority(self) -> int:
        return self.int_value("priority") or 100  # keepalived's default

    @property
    def virtual_router_id(self) -> int | None:
        return self.int_value("virtual_router_id")

    @property
    def advert_int(self) -> float:
        found = self.value("advert_int")
        try:
            return float(found.args[0]) if found and found.args else 1.0
        except ValueError:
            return 1.0

    @property
    def nopreempt(self) -> bool:
        return self.value("nopreempt") is not None

    @property
    def vips(self) -> list[str]:
        block = self.value("virtual_ipaddress")
        return [s.keyword.split("/")[0] for s in (block.children or [])] if block else []

    @property
    def authentication(self) -> Statement | None:
        return self.value("authentication")

    def tracked(self, block: str) -> list[Tracked]:
        out: list[Tracked] = []
        for section in self.statement.all(block):
            for entry in section.children or []:
                weight = None
                if "weight" in entry.args:
                    position = entry.args.index("weight") + 1
                    weight = _int(entry.args[position]) if position < len(entry.args) else None
                out.append(Tracked(entry.keyword, weight, "reverse" in entry.args, entry))
        return out


@dataclass
class Config:
    file: str
    statements: list[Statement]
    global_defs: Statement | None
    scripts: dict[str, VrrpScript]
    track_files: dict[str, TrackFile]
    instances: list[Instance]

    def global_flag(self, keyword: str) -> Statement | None:
        return self.global_defs.first(keyword) if self.global_defs else None

    def version(self, instance: Instance) -> int:
        found = instance.value("version") or self.global_flag("vrrp_version")
        return _int(found.args[0]) or 2 if found and found.args else 2


def _int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def _name(statement: Statement) -> str:
    return statement.args[0] if statement.args else ""


def read_config(path: str | Path, config_id: str | None = None) -> Config:
    statements = parse(path, config_id)
    global_defs = next((s for s in statements if s.keyword == "global_defs"), None)
    scripts: dict[str, VrrpScript] = {}
    track_files: dict[str, TrackFile] = {}
    instances: list[Instance] = []
    for s in statements:
        if s.keyword == "vrrp_script":
            script = s.first("script")
            weight = s.first("weight")
            user = s.first("user")
            scripts[_name(s)] = VrrpScript(
                _name(s), s, " ".join(script.args) if script else None,
                (_int(weight.args[0]) or 0) if weight and weight.args else 0,
                user.args[0] if user and user.args else None,
            )
        elif s.keyword in ("track_file", "vrrp_track_file"):
            file = s.first("file")
            weight = s.first("weight")
            track_files[_name(s)] = TrackFile(
                _name(s), s, file.args[0] if file and file.args else None,
                (_int(weight.args[0]) if weight and weight.args else 1) or 0,
            )
        elif s.keyword == "vrrp_instance":
            instances.append(Instance(_name(s), s, str(path)))
    return Config(str(path), statements, global_defs, scripts, track_files, instances)
