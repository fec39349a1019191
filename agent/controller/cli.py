"""`gateway-agent controller`: routes from swarm service labels, served to the gateways."""

from __future__ import annotations

import argparse
import asyncio

from agent.controller import settings
from agent.core import logs


def cmd_controller(args: argparse.Namespace) -> int:
    from agent.controller import main

    s = settings.from_sources(args)
    logs.setup(s.log_format, s.log_level)
    return asyncio.run(main.run(s))


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    controller = sub.add_parser("controller", help="serve routes from swarm service labels to "
                                "the gateways (one replica, on a manager; docs/labels.md)")
    settings.add_arguments(controller)
    controller.set_defaults(func=cmd_controller)
