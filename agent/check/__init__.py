"""`gateway-check`: can THIS node's gateway serve? Standard library only.

keepalived runs it on every node, either as a `vrrp_script` (one run per second at best) or as a
long-running watcher (`--watch`) that probes several times a second and writes a keepalived
`track_file` the moment the answer changes. Either way it must be cheap to start, so it imports
nothing beyond the standard library (and `agent/__init__.py` imports nothing at all).

Checks, combinable, all must pass:

    --http URL              a 2xx answer (the local gateway's health URL, or the agent's /readyz)
    --tcp HOST:PORT         a TCP connection (a host-mode published port)
    --docker-service NAME   a running, not unhealthy task of that service on THIS node, asked of the
                            local Docker socket

`--timeout` is a hard deadline for the whole run, also when a target hangs or blackholes: every
check runs in its own thread and the answer is given when the deadline passes, whatever the
threads are still doing. The result is one line naming each failed check and why.

Exit status: 0 all checks passed, 1 a check failed (or the run was cut short by SIGTERM/SIGINT),
2 bad arguments.

Track file values (keepalived 2.2 `track_file`): 0 means OK; with `weight 0` on the track_file a
non-zero value puts the VRRP instance in FAULT, which hands the VIP over fastest; with a non-zero
weight keepalived adds value*weight to the priority.
"""

from __future__ import annotations

# What is imported here is paid by every run, so: no argparse (a small parser below), no
# dataclasses, no http.client (which brings email.* and ssl), no urllib. json, ssl and quote are
# imported where a rarely used path needs them. `python3 -X importtime -m agent.check ...` shows
# what a run costs. The parts: base.py (a check, a verdict), http.py (a minimal HTTP client),
# probes.py (--http, --tcp, --docker-service), watch.py (the deadline, the track file watcher).
import signal
import sys

from agent.check.base import (
    DEFAULT_DOCKER_SOCKET,
    DEFAULT_TIMEOUT,
    STOP_SIGNALS,
    BadAnswer,
    Check,
    CheckFailed,
    Stopped,
    Verdict,
)
from agent.check.http import http_exchange
from agent.check.probes import docker_service_check, http_check, split_url, tcp_check
from agent.check.watch import (
    Watcher,
    log,
    raise_stopped,
    read_track_file,
    run_checks,
    write_track_file,
)

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: importing collections.abc or types costs at run time
    from collections.abc import Callable, Sequence

__all__ = ["BadAnswer", "Check", "CheckFailed", "Verdict", "http_exchange", "main",
           "parse_args", "read_track_file", "run_checks", "split_url", "write_track_file"]

# --- command line ----------------------------------------------------------------------------
# A small parser instead of argparse (several milliseconds to import, every run): the same
# options, help, abbreviations (`--time` for `--timeout`) and error messages, exit status 2.

USAGE = """\
usage: gateway-check [-h] [--http URL] [--tcp HOST:PORT]
                     [--docker-service NAME] [--docker-socket PATH]
                     [--timeout SECONDS] [-q] [--watch] [--track-file PATH]
                     [--interval SECONDS] [--fall N] [--rise N]
                     [--fail-value N] [--keep-on-exit] [--hold-syn ADDRESS]
                     [--hold-ports PORTS] [--hold-seconds S]
"""

HELP = USAGE + f"""
Check that THIS node's gateway can serve (for keepalived). Exit 0 if every
check passes, 1 if not, with one line saying which check failed and why.

options:
  -h, --help            show this help message and exit
  --http URL            expect a 2xx answer from URL (repeatable)
  --tcp HOST:PORT       expect a TCP connection to succeed (repeatable)
  --docker-service NAME
                        expect a running, not unhealthy task of service NAME
                        on this node (repeatable)
  --docker-socket PATH  the local Docker engine's socket (default
                        {DEFAULT_DOCKER_SOCKET})
  --timeout SECONDS     hard deadline for one run of all checks (default {DEFAULT_TIMEOUT})
  -q, --quiet           print nothing on success

watcher:
  run forever and keep a keepalived track_file up to date

  --watch               run as a watcher
  --track-file PATH     the track_file keepalived watches
  --interval SECONDS    time between the starts of two rounds (default 0.1)
  --fall N              consecutive failed rounds before writing the failure
                        (default 1)
  --rise N              consecutive good rounds before writing 0 again
                        (default 3)
  --fail-value N        value written on failure; with track_file weight 0 any
                        non-zero value means FAULT (default 1)
  --keep-on-exit        on SIGTERM leave the file as it is instead of writing
                        the failure value (a planned restart of the watcher
                        then does not move the VIP)
  --hold-syn ADDRESS    a VIP: when the gateway says it drains (/readyz 503
                        Draining) and this node holds ADDRESS, drop new
                        connections to it (iptables, SYNs only: clients send
                        them again) for --hold-seconds before giving the VIP
                        up, so that no connection is cut (repeatable)
  --hold-ports PORTS    comma-separated ports of --hold-syn (default 8080,443)
  --hold-seconds S      how long the connections in flight get (default 0.3)
"""


class UsageError(Exception):
    """Bad arguments: the message follows `gateway-check: error: `."""


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"invalid positive number value: {text!r}") from None
    if not value > 0:
        raise UsageError(f"{text!r} is not a positive number")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"invalid int value: {text!r}") from None
    if value < 1:
        raise UsageError(f"{text!r} is not a count of at least 1")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"invalid int value: {text!r}") from None


def _str(text: str) -> str:
    return text


def _ports(text: str) -> list[int]:
    parts = text.split(",")
    if not all(p.isdigit() and 0 < int(p) < 65536 for p in parts):
        raise UsageError(f"{text!r} is not a comma-separated list of ports")
    return [int(p) for p in parts]


class Options:
    """The parsed command line, with the defaults of every option."""

    def __init__(self) -> None:
        self.help = False
        self.http: list[str] = []
        self.tcp: list[str] = []
        self.docker_service: list[str] = []
        self.docker_socket = DEFAULT_DOCKER_SOCKET
        self.timeout = DEFAULT_TIMEOUT
        self.quiet = False
        self.watch = False
        self.track_file: str | None = None
        self.interval = 0.1
        self.fall = 1
        self.rise = 3
        self.fail_value = 1
        self.keep_on_exit = False
        self.hold_syn: list[str] = []
        self.hold_ports: list[int] = [8080, 443]
        self.hold_seconds = 0.3


# long option -> (short option, how to read its value or None for a flag, repeatable)
OPTIONS: dict[str, tuple[str | None, Callable[[str], object] | None, bool]] = {
    "--help": ("-h", None, False),
    "--http": (None, _str, True),
    "--tcp": (None, _str, True),
    "--docker-service": (None, _str, True),
    "--docker-socket": (None, _str, False),
    "--timeout": (None, _positive, False),
    "--quiet": ("-q", None, False),
    "--watch": (None, None, False),
    "--track-file": (None, _str, False),
    "--interval": (None, _positive, False),
    "--fall": (None, _count, False),
    "--rise": (None, _count, False),
    "--fail-value": (None, _int, False),
    "--keep-on-exit": (None, None, False),
    "--hold-syn": (None, _str, True),
    "--hold-ports": (None, _ports, False),
    "--hold-seconds": (None, _positive, False),
}
SHORT = {short: name for name, (short, _, _) in OPTIONS.items() if short}


def _looks_negative(text: str) -> bool:
    """argparse's rule: `-1` or `-.5` is a value, not an option."""
    whole, dot, fraction = text[1:].partition(".")
    return text.startswith("-") and (
        (whole.isdigit() and not dot) or ((not whole or whole.isdigit()) and fraction.isdigit()))


def _option(arg: str) -> tuple[str, str | None]:
    """The long option an argument names (an exact name, `-q`, or an unambiguous prefix) and
    the value given with `=`, if any."""
    if arg in SHORT:
        return SHORT[arg], None
    name, eq, value = arg.partition("=")
    if name in OPTIONS:
        return name, value if eq else None
    matches = [n for n in OPTIONS if n.startswith(name)] if name.startswith("--") else []
    if len(matches) == 1:
        return matches[0], value if eq else None
    if len(matches) > 1:
        raise UsageError(f"ambiguous option: {name} could match {', '.join(matches)}")
    raise LookupError(arg)


def parse_args(argv: Sequence[str]) -> Options:
    opts = Options()
    unknown: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            unknown += args[i - 1:]
            break
        if len(arg) > 2 and arg[1] != "-" and arg[:2] in SHORT:  # -q=1, -qh: as argparse
            rest = arg[2:]
            name = SHORT[arg[:2]]
            if rest.startswith("=") or not all(f"-{c}" in SHORT for c in rest):
                short = OPTIONS[name][0]
                raise UsageError(f"argument {short}/{name}: ignored explicit argument "
                                 f"{rest.removeprefix('=')!r}")
            args[i:i] = [f"-{c}" for c in rest]
            arg = arg[:2]
        if not arg.startswith("-") or arg == "-" or _looks_negative(arg):
            unknown.append(arg)
            continue
        try:
            name, value = _option(arg)
        except LookupError:
            unknown.append(arg)
            continue
        short, convert, repeat = OPTIONS[name]
        shown = f"{short}/{name}" if short else name
        if convert is None:
            if value is not None:
                raise UsageError(f"argument {shown}: ignored explicit argument {value!r}")
            setattr(opts, name[2:].replace("-", "_"), True)
            if name == "--help":
                return opts
            continue
        if value is None:
            if i >= len(args) or (args[i].startswith("-") and not _looks_negative(args[i])):
                raise UsageError(f"argument {shown}: expected one argument")
            value = args[i]
            i += 1
        try:
            converted = convert(value)
        except UsageError as exc:
            raise UsageError(f"argument {shown}: {exc}") from None
        dest = name[2:].replace("-", "_")
        if repeat:
            getattr(opts, dest).append(converted)
        else:
            setattr(opts, dest, converted)
    if unknown:
        raise UsageError(f"unrecognized arguments: {' '.join(unknown)}")
    return opts


def parse_checks(opts: Options) -> list[Check]:
    checks = [http_check(url) for url in opts.http]
    checks += [tcp_check(value) for value in opts.tcp]
    checks += [docker_service_check(name, opts.docker_socket) for name in opts.docker_service]
    return checks


def _checked(argv: Sequence[str]) -> tuple[Options, list[Check]]:
    """The options and checks of a command line, or UsageError saying what is wrong."""
    opts = parse_args(argv)
    if opts.help:
        return opts, []
    try:
        checks = parse_checks(opts)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if not checks:
        raise UsageError("give at least one of --http, --tcp, --docker-service")
    if opts.watch and not opts.track_file:
        raise UsageError("--watch needs --track-file")
    if opts.watch and opts.fail_value == 0:
        raise UsageError("--fail-value must not be 0 (0 means OK to keepalived)")
    return opts, checks


def main(argv: Sequence[str] | None = None) -> int:
    try:
        opts, checks = _checked(sys.argv[1:] if argv is None else argv)
    except UsageError as exc:
        sys.stderr.write(f"{USAGE}gateway-check: error: {exc}\n")
        return 2
    if opts.help:
        sys.stdout.write(HELP)
        return 0

    for signum in STOP_SIGNALS:
        signal.signal(signum, raise_stopped)
    if opts.watch:
        assert opts.track_file is not None
        log(f"watching every {opts.interval:g}s, writing {opts.track_file}: "
            + ", ".join(c.label for c in checks))
        hold = None
        if opts.hold_syn:
            from agent.check.hold import SynHold

            hold = SynHold(opts.hold_syn, opts.hold_ports, opts.hold_seconds, log)
            hold.clear()
        return Watcher(checks, opts.track_file, opts.interval, opts.timeout, opts.rise,
                       opts.fall, opts.fail_value, not opts.keep_on_exit, hold).run()
    try:
        verdict = run_checks(checks, opts.timeout)
    except Stopped as stop:
        print(f"FAIL stopped by {stop.signame} before the checks finished", file=sys.stderr,
              flush=True)
        return 1
    if not verdict.ok:
        print(verdict.line, file=sys.stderr, flush=True)
        return 1
    if not opts.quiet:
        print(verdict.line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
