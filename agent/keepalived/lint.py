"""Find the mistakes that leave the VIP on the wrong node, in one or more nodes' keepalived.conf.

Each finding names file and line and has a short code:

  per file
    parse-error            the file cannot be read as keepalived configuration
    unknown-track-script   a track_script entry names no vrrp_script (keepalived ignores it)
    unknown-track-file     a track_file entry names no track_file block
    no-check               the instance tracks no check: the VIP leaves only with the node itself
    auth-pass-truncated    auth_pass longer than 8 characters (keepalived uses the first 8)
    auth-ignored-v3        authentication on VRRPv3, which has none (keepalived ignores it)
    nopreempt-master       nopreempt with state MASTER (nopreempt only works from BACKUP)
    strict-drops-vip       vrrp_strict/strict_mode without accept: the node drops traffic to the VIP
    script-security-off    scripts run as root whoever can write them (no enable_script_security)
    script-user-missing    the user a script should run as does not exist: keepalived drops it
    script-missing         a tracked or notify script that does not exist on this machine
    script-not-executable  ... that its user cannot execute or reach, or whose #! interpreter it
                           cannot run (keepalived then counts the check as PASSED)
    script-venv-python     ... started through a venv's bin/python symlink (keepalived runs the
                           real path, without the venv)
    script-insecure        ... run as root from a path a non-root user can write (disabled)
  across the files of one instance (same vrrp_instance name, or a shared VIP)
    vrid-mismatch          virtual_router_id differs: each node is its own router, all take the VIP
    duplicate-priority     two nodes with the same priority: the winner depends on IP addresses
    master-not-highest     state MASTER on a node that is not the highest priority: highest wins
    advert-int-mismatch    advert_int differs (VRRPv2 drops such adverts; VRRPv3 timers disagree)
    version-mismatch       VRRP versions differ
    auth-mismatch          authentication differs (after keepalived's truncation to 8 characters)
    vip-mismatch           the nodes do not carry the same virtual addresses
    unicast-peer-missing   a node's unicast_peer list misses another node's unicast_src_ip
    weight-too-small       a failed check does not drop the node below a healthy one

The script checks look at this machine's files; `check_files=False` skips them (for configuration
that belongs to other hosts).
"""

from __future__ import annotations

import os
import pwd
import stat
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.keepalived.config import Config, ConfigError, Instance, Statement, read_config

AUTH_PASS_MAX = 8
DEFAULT_SCRIPT_USER = "keepalived_script"
TRACKING_BLOCKS = ("track_script", "track_file", "track_process", "track_bfd")
NOTIFY_KEYWORDS = ("notify", "notify_master", "notify_backup", "notify_fault", "notify_stop",
                   "notify_deleted", "notify_master_rx_lower_pri")


@dataclass(frozen=True, order=True)
class Finding:
    file: str
    line: int
    code: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.code}: {self.message}"


def _at(statement: Statement, code: str, message: str) -> Finding:
    return Finding(statement.file, statement.line, code, message)


# --- one file -------------------------------------------------------------------------------


def _is_on(statement: Statement | None) -> bool:
    if statement is None:
        return False
    return not statement.args or statement.args[0].lower() in ("on", "true", "yes")


def lint_instance(config: Config, instance: Instance) -> Iterable[Finding]:
    where = instance.statement
    for entry in instance.tracked("track_script"):
        if entry.name not in config.scripts:
            yield _at(entry.statement, "unknown-track-script",
                      f"track_script {entry.name} names no vrrp_script: keepalived ignores it")
    for entry in instance.tracked("track_file"):
        if entry.name not in config.track_files:
            yield _at(entry.statement, "unknown-track-file",
                      f"track_file {entry.name} names no track_file block: keepalived ignores it")
    if not any(instance.statement.all(block) for block in TRACKING_BLOCKS):
        yield _at(where, "no-check",
                  f"vrrp_instance {instance.name} tracks no check of the gateway: the VIP "
                  "leaves this node only when the node or keepalived dies, not when the "
                  "gateway does")
    auth = instance.authentication
    if auth is not None:
        if config.version(instance) == 3:
            yield _at(auth, "auth-ignored-v3",
                      "authentication is ignored with VRRPv3 (it has none); remove it")
        password = auth.first("auth_pass")
        if password and password.args and len(password.args[0]) > AUTH_PASS_MAX:
            yield _at(password, "auth-pass-truncated",
                      f"auth_pass is {len(password.args[0])} characters; keepalived uses only "
                      f"the first {AUTH_PASS_MAX} ({password.args[0][:AUTH_PASS_MAX]!r})")
    if instance.nopreempt and instance.state == "MASTER":
        statement = instance.value("nopreempt") or where
        yield _at(statement, "nopreempt-master",
                  "nopreempt has no effect with state MASTER; use state BACKUP on every node")
    strict = instance.value("strict_mode") or config.global_flag("vrrp_strict")
    accepts = instance.value("accept") is not None and config.version(instance) == 3
    if _is_on(strict) and instance.vips and not accepts:
        assert strict is not None
        yield _at(strict, "strict-drops-vip",
                  f"{strict.keyword} sets no_accept: this node drops traffic addressed to "
                  f"{', '.join(instance.vips)}, which a web gateway must answer (remove it, or "
                  "with VRRPv3 add 'accept')")


def _first_word(command: str) -> str:
    return command.split()[0] if command.split() else ""


def _resolve(program: str) -> Path | None:
    if "/" in program:
        return Path(program)
    for folder in os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin").split(":"):
        candidate = Path(folder or ".") / program
        if candidate.is_file():
            return candidate
    return None


def _executable(st: os.stat_result, uid: int, gid: int) -> bool:
    """keepalived's is_executable() for the uid/gid the script will run as."""
    mode = st.st_mode
    if uid == 0:
        return bool(mode & 0o111)
    if uid == st.st_uid:
        return bool(mode & stat.S_IXUSR)
    return bool(mode & (stat.S_IXGRP if gid == st.st_gid else stat.S_IXOTH))


def _unsafe_part(path: Path) -> str | None:
    """The first part of `path` that keepalived's script security calls writable by non-root."""
    parts = [Path("/")] + [Path(*path.parts[: i + 1]) for i in range(1, len(path.parts))]
    for part in parts:
        st = part.stat()
        sticky_dir = st.st_mode & stat.S_ISVTX and not stat.S_ISREG(st.st_mode)
        if st.st_uid != 0:
            return f"{part} is owned by uid {st.st_uid}"
        if not sticky_dir and (
            (st.st_gid != 0 and st.st_mode & stat.S_IWGRP) or st.st_mode & stat.S_IWOTH
        ):
            return f"{part} is writable by {'others' if st.st_mode & stat.S_IWOTH else 'its group'}"
    return None


@dataclass(frozen=True)
class _RunAs:
    uid: int
    gid: int
    name: str


def _run_as(config: Config, user: str | None, where: Statement) -> _RunAs | Finding:
    """The user a script runs as, as keepalived 2.2 decides it, or why it will not run."""
    explicit = user or (config.global_flag("script_user").arg(0)  # type: ignore[union-attr]
                        if config.global_flag("script_user") else None)
    name = explicit or DEFAULT_SCRIPT_USER
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        if explicit is None and not config.global_flag("enable_script_security"):
            return _RunAs(0, 0, "root")
        hint = "" if explicit else " (set script_user in global_defs, or create the user)"
        return _at(where, "script-user-missing",
                   f"user {name!r} does not exist on this machine: keepalived drops the "
                   f"script{hint}")
    return _RunAs(entry.pw_uid, entry.pw_gid, name)


def _searchable(folder: Path, uid: int, gid: int) -> bool:
    st = folder.stat()
    if uid == 0:
        return True
    if uid == st.st_uid:
        return bool(st.st_mode & stat.S_IXUSR)
    return bool(st.st_mode & (stat.S_IXGRP if gid == st.st_gid else stat.S_IXOTH))


def _unreachable(path: Path, run_as: _RunAs) -> str | None:
    """Why `run_as` cannot start `path` (a folder on the way, or its #! interpreter), if so."""
    real = Path(os.path.realpath(path))
    for folder in real.parents:
        if not _searchable(folder, run_as.uid, run_as.gid):
            return f"{run_as.name} cannot enter {folder}"
    try:
        with open(real, "rb") as f:
            first = f.readline(256)
    except OSError:
        return None
    if first.startswith(b"#!") and first[2:].split():
        interpreter = Path(first[2:].split()[0].decode(errors="replace"))
        real_interpreter = Path(os.path.realpath(interpreter))
        if not real_interpreter.is_file():
            return f"its interpreter {interpreter} does not exist"
        if not _executable(real_interpreter.stat(), run_as.uid, run_as.gid):
            return f"{run_as.name} cannot execute its interpreter {interpreter}"
        for folder in real_interpreter.parents:
            if not _searchable(folder, run_as.uid, run_as.gid):
                return f"{run_as.name} cannot reach its interpreter {interpreter} ({folder})"
    return None


def _script_problem(label: str, command: str, run_as: _RunAs,
                    secure: bool) -> tuple[str, str] | None:
    """(code, message) for the first reason keepalived will not run `command` properly."""
    word = _first_word(command)
    path = _resolve(word)
    if path is None or not path.exists():
        return "script-missing", f"{label}: {word} does not exist on this machine: keepalived " \
            "drops it"
    if path.is_symlink() and (path.parent.parent / "pyvenv.cfg").exists():
        return "script-venv-python", (
            f"{label}: {path} is a virtual environment's python; keepalived runs the real path "
            f"({os.path.realpath(path)}), which starts without the environment: call the "
            "environment's console script (bin/gateway-check, bin/gateway-agent) instead")
    st = path.stat()
    if not stat.S_ISREG(st.st_mode) or not _executable(st, run_as.uid, run_as.gid):
        return "script-not-executable", (
            f"{label}: {path} is not executable by {run_as.name}: keepalived drops it")
    unreachable = _unreachable(path, run_as)
    if unreachable:
        return "script-not-executable", (
            f"{label}: {unreachable}: the script cannot start, and keepalived 2.2 counts a script "
            "that cannot start as a check that PASSED")
    if secure and (run_as.uid == 0 or run_as.gid == 0):
        unsafe = _unsafe_part(path)
        if unsafe:
            return "script-insecure", (
                f"{label} runs as root but {unsafe}: enable_script_security makes keepalived "
                "drop it")
    return None


def lint_script_files(config: Config) -> Iterable[Finding]:
    secure = config.global_flag("enable_script_security") is not None
    tracked = {e.name for i in config.instances for e in i.tracked("track_script")}
    commands: list[tuple[str, str, str | None, Statement]] = []
    for script in config.scripts.values():
        if script.name in tracked and script.script:
            line = script.statement.first("script") or script.statement
            commands.append((f"vrrp_script {script.name}", script.script, script.user, line))
    for instance in config.instances:
        for keyword in NOTIFY_KEYWORDS:
            for statement in instance.statement.all(keyword):
                if statement.args:
                    user = statement.args[1] if len(statement.args) > 1 else None
                    commands.append((keyword, statement.args[0], user, statement))
    if commands and not secure:
        where = config.global_defs or commands[0][3]
        yield _at(where, "script-security-off",
                  "scripts are configured but enable_script_security is not: keepalived runs "
                  "them even when a non-root user could change them")
    for label, command, user, where in commands:
        run_as = _run_as(config, user, where)
        if isinstance(run_as, Finding):
            yield run_as
            continue
        problem = _script_problem(label, command, run_as, secure)
        if problem:
            yield _at(where, *problem)


# --- the files of one instance together -------------------------------------------------------


@dataclass(frozen=True)
class _Member:
    config: Config
    instance: Instance


def group_instances(configs: Sequence[Config]) -> list[list[_Member]]:
    """Instances of different files that are one virtual router: same name or a shared VIP."""
    members = [_Member(c, i) for c in configs for i in c.instances]
    parent = list(range(len(members)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, first in enumerate(members):
        for b in range(a + 1, len(members)):
            second = members[b]
            if first.config is second.config:
                continue
            if first.instance.name == second.instance.name or (
                set(first.instance.vips) & set(second.instance.vips)
            ):
                parent[root(b)] = root(a)
    groups: dict[int, list[_Member]] = {}
    for i, member in enumerate(members):
        groups.setdefault(root(i), []).append(member)
    return [g for g in groups.values() if len(g) > 1]


def _place(member: _Member, keyword: str) -> Statement:
    return member.instance.value(keyword) or member.instance.statement


def _odd_ones(group: list[_Member], key: Callable[[_Member], object],
              ) -> Iterator[tuple[_Member, object, _Member, object]]:
    """(member, its value, a member with the usual value, the usual value) for each member whose
    value differs from the most common one (the earliest file's on a tie)."""
    values = [key(m) for m in group]
    counts = Counter(values)
    usual = max(counts, key=lambda v: (counts[v], -values.index(v)))
    reference = group[values.index(usual)]
    for member, value in zip(group, values, strict=True):
        if value != usual:
            yield member, value, reference, usual


def _mismatch(group: list[_Member], keyword: str, code: str, describe: str,
              key: Callable[[_Member], object]) -> Iterable[Finding]:
    for member, value, reference, usual in _odd_ones(group, key):
        yield _at(_place(member, keyword), code,
                  f"{keyword} {value} differs from {usual} in "
                  f"{_place(reference, keyword).where}: {describe}")


def _auth_key(member: _Member) -> object:
    auth = member.instance.authentication
    if auth is None:
        return "none"
    kind = auth.first("auth_type")
    password = auth.first("auth_pass")
    return (f"{kind.arg(0, '') if kind else ''} "
            f"{(password.arg(0, '') or '')[:AUTH_PASS_MAX] if password else ''}").strip()


def _weights(member: _Member) -> tuple[int, list[tuple[str, int, Statement]]]:
    """(healthy priority, [(check, priority lost when it fails, where its weight is set)])."""
    config, instance = member.config, member.instance
    healthy = instance.priority
    drops: list[tuple[str, int, Statement]] = []
    for entry in instance.tracked("track_script"):
        script = config.scripts.get(entry.name)
        if script is None or entry.reverse:
            continue
        weight = entry.weight if entry.weight is not None else script.weight
        where = entry.statement if entry.weight is not None else script.weight_statement
        if weight > 0:
            healthy += weight
        if weight:
            drops.append((f"vrrp_script {entry.name} (weight {weight})", abs(weight), where))
    for entry in instance.tracked("track_file"):
        track_file = config.track_files.get(entry.name)
        if track_file is None or entry.reverse:
            continue
        weight = entry.weight if entry.weight is not None else track_file.weight
        where = entry.statement if entry.weight is not None else (
            track_file.statement.first("weight") or track_file.statement)
        if weight:  # a failure value of 1 adds `weight` to the priority
            drops.append((f"track_file {entry.name} (weight {weight})", -weight, where))
    return min(healthy, 254), drops


def _weight_findings(group: list[_Member]) -> Iterable[Finding]:
    healthy = [_weights(m)[0] for m in group]
    for index, member in enumerate(group):
        others = [(healthy[j], group[j]) for j in range(len(group)) if j != index]
        lowest, lowest_member = min(others, key=lambda pair: pair[0])
        own, drops = _weights(member)
        for label, drop, where in drops:
            if member.instance.priority == 255:
                yield _at(where, "weight-too-small",
                          f"{label}: priority 255 (address owner) is never lowered by tracking; "
                          "use a lower priority or weight 0")
                continue
            failed = max(1, min(254, own - drop))
            if failed < lowest:
                continue
            if drop <= 0:
                why = "a failure value RAISES the priority (value x weight is added)"
            else:
                why = (f"when it fails the priority drops from {own} to {failed}, not below "
                       f"{lowest} of {lowest_member.instance.statement.where}")
            yield _at(where, "weight-too-small",
                      f"{label}: {why}, so the VIP stays on a node whose check failed; use "
                      f"weight 0 (FAULT) or a weight of at most {lowest - own - 1}")


def lint_group(group: list[_Member]) -> Iterable[Finding]:
    yield from _mismatch(group, "virtual_router_id", "vrid-mismatch",
                         "every node of one instance needs the SAME id, or each forms its own "
                         "virtual router and takes the VIP (split brain)",
                         lambda m: m.instance.virtual_router_id)
    yield from _mismatch(group, "advert_int", "advert-int-mismatch",
                         "every node needs the same advert_int", lambda m: m.instance.advert_int)
    yield from _mismatch(group, "version", "version-mismatch",
                         "every node needs the same VRRP version",
                         lambda m: m.config.version(m.instance))
    for member, _, reference, _ in _odd_ones(group, _auth_key):
        yield _at(member.instance.authentication or member.instance.statement, "auth-mismatch",
                  f"authentication differs from {reference.instance.statement.where} "
                  "(keepalived compares the first 8 characters of auth_pass): the nodes ignore "
                  "each other's adverts")
    def vips(member: _Member) -> str:
        return ", ".join(sorted(member.instance.vips)) or "(none)"

    for member, value, reference, usual in _odd_ones(group, vips):
        yield _at(_place(member, "virtual_ipaddress"), "vip-mismatch",
                  f"virtual addresses {value} differ from {usual} in "
                  f"{reference.instance.statement.where}: every node must carry the same")

    priorities = [m.instance.priority for m in group]
    seen: dict[int, _Member] = {}
    for member in group:
        priority = member.instance.priority
        if priority in seen:
            yield _at(_place(member, "priority"), "duplicate-priority",
                      f"priority {priority} is also {_place(seen[priority], 'priority').where}: "
                      "with equal priorities the higher IP address wins; give each node its own")
        else:
            seen[priority] = member
    highest = max(priorities)
    top = group[priorities.index(highest)]
    for member in group:
        if member.instance.state == "MASTER" and member.instance.priority < highest:
            yield _at(_place(member, "state"), "master-not-highest",
                      f"state MASTER with priority {member.instance.priority}, but "
                      f"{_place(top, 'priority').where} has {highest} and the HIGHEST priority "
                      "wins: this node gives the VIP up as soon as it hears that one (use state "
                      "BACKUP everywhere and let priorities decide)")

    sources = {m.instance.value("unicast_src_ip").arg(0): m  # type: ignore[union-attr]
               for m in group if m.instance.value("unicast_src_ip")}
    for member in group:
        block = member.instance.value("unicast_peer")
        if block is None:
            continue
        peers = {s.keyword for s in block.children or []}
        for address, other in sources.items():
            if other is not member and address not in peers:
                yield _at(block, "unicast-peer-missing",
                          f"unicast_peer lacks {address} ({other.instance.statement.where}): "
                          "this node never hears it")
    yield from _weight_findings(group)


def lint_files(paths: Sequence[str | Path], check_files: bool = True) -> list[Finding]:
    """Every finding for these files, sorted by file and line."""
    configs: list[Config] = []
    findings: list[Finding] = []
    for path in paths:
        try:
            configs.append(read_config(path))
        except ConfigError as exc:
            findings.append(Finding(exc.file, exc.line, "parse-error", exc.message))
    for config in configs:
        for instance in config.instances:
            findings.extend(lint_instance(config, instance))
        if check_files:
            findings.extend(lint_script_files(config))
    for group in group_instances(configs):
        findings.extend(lint_group(group))
    return sorted(set(findings))
