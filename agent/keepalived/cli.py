"""`gateway-agent keepalived {render,lint,notify}`.

`register(subparsers)` adds the `keepalived` command to the agent's parser; every subcommand sets
`func(args) -> exit code`. Heavy imports (pydantic, YAML, prometheus_client) happen inside the
subcommand that needs them, so `notify`, which keepalived runs on every transition, pays only for
its own.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agent.core.files import write_atomic


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, text)


def _render(args: argparse.Namespace) -> int:
    from agent.keepalived.render import ClusterError, load_cluster, render_node

    try:
        cluster = load_cluster(args.cluster)
        names = [args.node] if args.node else [n.name for n in cluster.nodes]
        texts = {name: render_node(cluster, name, source=args.cluster.name) for name in names}
    except ClusterError as exc:
        print(exc, file=sys.stderr)
        return 1
    if args.output_dir is not None:
        for name, text in texts.items():
            _write_atomically(args.output_dir / f"{name}.conf", text)
            print(f"wrote {args.output_dir / f'{name}.conf'}", file=sys.stderr)
    elif args.output is not None:
        _write_atomically(args.output, texts[args.node])
    else:
        sys.stdout.write(texts[args.node])
    return 0


def _lint(args: argparse.Namespace) -> int:
    from agent.keepalived.lint import lint_files

    findings = lint_files(args.files, check_files=not args.skip_files)
    for finding in findings:
        print(finding)
    if findings:
        print(f"{len(findings)} problem(s) in {len(args.files)} file(s)", file=sys.stderr)
        return 1
    return 0


def _notify(args: argparse.Namespace) -> int:
    from agent.keepalived.notify import main

    return main(args.textfile, args.type, args.name, args.state, args.priority)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "keepalived", help="render, lint and record keepalived configuration and transitions",
        description="keepalived support: one cluster file -> each node's keepalived.conf; find "
        "the mistakes that leave the VIP on the wrong node; record VRRP transitions.")
    commands = parser.add_subparsers(dest="keepalived_command", metavar="COMMAND", required=True)

    render = commands.add_parser(
        "render", help="write a node's keepalived.conf from the cluster file",
        description="Render keepalived.conf for one node (to stdout or --output), or for every "
        "node into --output-dir as NODE.conf.")
    render.add_argument("--cluster", required=True, type=Path, metavar="FILE",
                        help="the cluster description (YAML)")
    render.add_argument("--node", metavar="NAME", help="the node to render")
    target = render.add_mutually_exclusive_group()
    target.add_argument("-o", "--output", type=Path, metavar="FILE",
                        help="write here (atomically) instead of stdout")
    target.add_argument("--output-dir", type=Path, metavar="DIR",
                        help="write NODE.conf for every node (or just --node) into DIR")
    render.set_defaults(func=_render)

    lint = commands.add_parser(
        "lint", help="find mistakes in one or more nodes' keepalived.conf",
        description="Report, with file and line, mistakes that keep the VIP on the wrong node. "
        "Give every node's file of a cluster at once to compare them. Exit 1 if any is found.")
    lint.add_argument("files", nargs="+", metavar="FILE")
    lint.add_argument("--skip-files", action="store_true",
                      help="do not look for the scripts on this machine (files of other hosts)")
    lint.set_defaults(func=_lint)

    notify = commands.add_parser(
        "notify", help="record a VRRP transition (keepalived's notify hook)",
        description="Record one transition in a Prometheus textfile and in the log. keepalived "
        "appends TYPE NAME STATE PRIORITY to the configured command.")
    notify.add_argument("--textfile", required=True, metavar="FILE",
                        help="the .prom file for node_exporter's textfile collector")
    notify.add_argument("type", metavar="TYPE", help="INSTANCE or GROUP")
    notify.add_argument("name", metavar="NAME")
    notify.add_argument("state", metavar="STATE", help="MASTER, BACKUP, FAULT, STOP or DELETED")
    notify.add_argument("priority", metavar="PRIORITY")
    notify.set_defaults(func=_notify)

    def _needs_node(args: argparse.Namespace) -> int:
        if args.node is None and args.output_dir is None:
            render.error("give --node NAME, or --output-dir DIR for every node")
        return _render(args)

    render.set_defaults(func=_needs_node)
