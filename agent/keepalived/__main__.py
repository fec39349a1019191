"""`python -m agent.keepalived {render,lint,notify}`: what `gateway-agent keepalived` offers.

It loads only the keepalived commands, not the whole agent: keepalived's notify hook can call it
cheaply.
"""

from __future__ import annotations

import argparse
import sys

from agent.keepalived.cli import register


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent.keepalived")
    commands = parser.add_subparsers(dest="command", required=True)
    register(commands)
    args = parser.parse_args(["keepalived", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
