"""`gateway-agent`: run (the container's entrypoint), check, render, controller, keepalived.

Each program registers its own commands and settings: the gateway (agent/gateway/cli.py), the
controller (agent/controller/cli.py), the keepalived tools (agent/keepalived/cli.py).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from agent import __version__
from agent.controller import cli as controller_cli
from agent.core.settings import SettingsError
from agent.gateway import cli as gateway_cli
from agent.keepalived import cli as keepalived_cli


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gateway-agent", description=__doc__.split("\n\n")[0])
    p.add_argument("--version", action="version", version=f"gateway-agent {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    gateway_cli.register(sub)
    controller_cli.register(sub)
    keepalived_cli.register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
