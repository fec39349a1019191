"""`gateway-agent keepalived ...` subcommands (placeholder until the keepalived work lands)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("keepalived", help="render and lint keepalived configuration")
    parser.set_defaults(func=lambda args: parser.error("not implemented yet"))
