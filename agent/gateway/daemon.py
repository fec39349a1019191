"""The lifecycle shell of `gateway-agent run`: start, loop, shut down. Signals only set events.

Exit status: 0 after SIGTERM/SIGINT (nginx quit gracefully: requests in flight finished);
1 when nginx died or could not start with a valid configuration, so that swarm's restart
policy restarts the task.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
import socket
import sys
import time
from pathlib import Path

from agent.core.serve import AdminServer
from agent.core.settings import read_token, redacted_url
from agent.gateway.drain import wait_for_handover
from agent.gateway.drivers.discovery import Discovery
from agent.gateway.drivers.dnsserver import LocalResolver
from agent.gateway.drivers.logfile import POLL_INTERVAL, LogFile, Relay
from agent.gateway.drivers.memory import fixed_thresholds
from agent.gateway.drivers.nginx import ApplyError, Nginx, NginxDied
from agent.gateway.drivers.nginxversion import NginxTooOld, nginx_version
from agent.gateway.drivers.ports import reserved_ports
from agent.gateway.drivers.routefiles import copies_dir, for_gateway
from agent.gateway.drivers.routes import RoutesInput
from agent.gateway.drivers.source import ControllerRoutes, SourceMetrics
from agent.gateway.drivers.tls import Certificates, store_dir
from agent.gateway.observe.admin import make_app
from agent.gateway.observe.metrics import Metrics
from agent.gateway.observe.spans import Spans, otlp_spans
from agent.gateway.observe.state import State, words
from agent.gateway.pipeline import access_log_of, planner_for, relay_file_of, tracing
from agent.gateway.plan.observe import STDOUT
from agent.gateway.reconciler import Reconciler
from agent.gateway.settings import GatewaySettings

log = logging.getLogger("agent")


def control_name(settings: GatewaySettings) -> str | None:
    """The name whose answer tells "the nameserver works" (see agent.gateway.drivers.discovery)."""
    name = settings.dns_control_name
    if name == "none":
        return None
    if name != "auto":
        return name
    if settings.nameserver.host != "127.0.0.11":
        return None
    try:  # in a container, the hostname maps to the container's address in /etc/hosts
        own = ipaddress.ip_address(socket.gethostbyname(socket.gethostname()))
    except (OSError, ValueError):
        log.warning("dns_control_unavailable reason='own address unknown'")
        return None
    return own.reverse_pointer


def build(settings: GatewaySettings, access_log: str | None = None,
          ) -> tuple[Reconciler, Nginx, Metrics, State, ControllerRoutes | None]:
    """The parts of the daemon; `access_log` is the file nginx writes its lines to."""
    metrics = Metrics()
    state = State()
    nginx = Nginx(settings)
    discovery = Discovery(settings.nameserver, settings.dns_timeout, metrics,
                          control_name=control_name(settings),
                          task_networks=settings.task_networks,
                          # nginx resolves with ipv6=off: AAAA answers would not be used
                          ipv6=settings.upstream_mode == "static")
    planner = planner_for(settings, access_log)
    copies = store_dir(settings.nginx_prefix, settings.nginx_conf_dir)
    acme_dir = copies.parent / f"{copies.name}-acme" if settings.routes_url else None
    certificates = Certificates(settings.certs_dir, copies, settings.tls_ca_bundle,
                                acme_dir=acme_dir)
    sources = None
    if settings.routes_url is not None:  # routes from service labels (agent/sources.py)
        token = read_token(settings.controller_token_file) \
            if settings.controller_token_file is not None else None
        sources = ControllerRoutes(settings.routes_url, SourceMetrics(metrics.registry),
                                   zone=settings.zone, state_dir=settings.state_dir,
                                   token=token, acme_dir=acme_dir,
                                   reserved=reserved_ports(settings))
    route_files = for_gateway(settings, copies_dir(settings.nginx_prefix,
                                                   settings.nginx_conf_dir))
    resolver = LocalResolver(settings.resolver_listen, lambda: state.snapshot, settings.nameserver,
                             settings.dns_timeout, metrics.registry, state.first_lookups.discard,
                             avoid=reserved_ports(settings),
                             ttl=lambda name: reconciler.answer_ttl(name),
                             asked=lambda name: reconciler.look_again(name))
    reconciler = Reconciler(settings, nginx, discovery, planner, metrics, state,
                            routes=RoutesInput(settings, metrics, sources),
                            certificates=certificates, route_files=route_files,
                            resolver=resolver)
    if sources is not None:
        sources.on_change = reconciler.wake.set
    return reconciler, nginx, metrics, state, sources


LAST_COPY_SECONDS = 5.0  # at the stop, for the JSON access log's last lines to reach stdout


async def read_access_log(reader: LogFile, stop: asyncio.Event, in_thread: bool = False,
                          ) -> None:
    """Every POLL_INTERVAL, hand on what nginx appended to an access-log file; once more after
    `stop` (nginx has quit: its last lines are in). `in_thread`: the JSON log's copy to stdout,
    which may wait on the reader of the pipe."""
    loop = asyncio.get_running_loop()
    next_run = loop.time()
    while True:
        last = stop.is_set()  # a poll that starts after `stop` is the last one
        if not last:
            next_run += POLL_INTERVAL
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, next_run - loop.time()))
        try:
            if in_thread:
                await asyncio.to_thread(reader.poll)
            else:
                reader.poll()
        except Exception:  # a bad poll must not end the daemon; the next one carries on
            log.exception("access_log_read_failed path=%s", reader.path)
        if last:
            return


async def drain(nginx: Nginx, state: State, settings: GatewaySettings,
                hurry: asyncio.Event) -> None:
    """Before nginx quits: close kept-alive connections, say not ready, wait until the VIP
    (or the load balancer's traffic) has moved (agent/gateway/drain.py)."""
    started = time.monotonic()
    log.info("draining delay=%gs vrrp_state_file=%s", settings.drain_delay,
             settings.vrrp_state_file)
    try:
        await nginx.close_client_connections()
    except (ApplyError, OSError) as exc:  # still drain: the listeners are what matters
        log.warning("drain_keepalive_unchanged error=%r", str(exc))
    state.draining = True
    moved = await wait_for_handover(settings.vrrp_state_file, settings.drain_delay, hurry)
    log.info("drained seconds=%.2f how=%r", time.monotonic() - started, moved)


async def run(settings: GatewaySettings) -> int:
    fixed_thresholds()  # large blocks of memory are given back when freed (drivers/memory.py)
    try:
        version = nginx_version(settings.nginx_binary)
    except NginxTooOld as exc:
        log.error("nginx_unusable error=%r", str(exc))
        return 1
    log.info("nginx_found version=%s", ".".join(map(str, version)))
    admin_token = read_token(settings.admin_token_file, "--admin-token-file") \
        if settings.admin_token_file is not None else None
    if admin_token is None and not ipaddress.ip_address(settings.admin_listen.host).is_loopback:
        log.warning("admin_without_token address=%s effect=%r", settings.admin_listen,
                    "/status and /metrics (routes, services, task addresses, errors) answer "
                    "whoever reaches this address; give --admin-token-file")
    access_log = access_log_of(settings)
    reconciler, nginx, metrics, state, sources = build(settings, access_log=access_log)
    reader = None
    if access_log is not None:
        reader = LogFile(Path(access_log), metrics.traffic, nginx_pids=nginx.pids,
                         reopen=nginx.reopen_logs, rotate_size=settings.access_log_rotate_size)
        metrics.traffic.follow(lambda: state.routes)
    relay = copier = None  # --access-log stdout: nginx writes a file, the agent copies it
    if settings.access_log == STDOUT:
        copier = Relay(sys.stdout.fileno(),
                       lambda result, n: metrics.json_log_bytes.labels(result).inc(n),
                       backlog=2 * settings.access_log_rotate_size)
        relay = LogFile(Path(relay_file_of(settings)), copier, nginx_pids=nginx.pids,
                        reopen=nginx.reopen_logs, rotate_size=settings.access_log_rotate_size)
    spans: Spans | None = None
    if reader is not None and tracing(settings):
        assert settings.otlp_endpoint is not None
        spans = otlp_spans(settings.otlp_endpoint,
                           lambda result, n: metrics.trace_spans.labels(result).inc(n))
        spans.follow(lambda: state.routes)
        metrics.traffic.spans = spans.offer
        spans.start()
        log.info("traces_on endpoint=%s sample_ratio=%g", redacted_url(settings.otlp_endpoint),
                 settings.trace_sample_ratio)
    if sources is not None:  # the controller's routes: saved ones, one quick
        await sources.start()  # request, then a long-poll in the background
    reconciler.load_initial_routes()  # RoutesError: the caller prints every problem
    nginx.prepare()
    for each in (reader, relay):
        if each is not None:  # before nginx opens it: a previous run's lines are not read again
            each.reset()

    stop = asyncio.Event()
    hurry = asyncio.Event()  # told again while draining: stop waiting for the handover

    def told_to_stop() -> None:
        if stop.is_set():
            hurry.set()
        stop.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, told_to_stop)

    admin = AdminServer(make_app(state, nginx, metrics, settings, sources=sources,
                                 token=admin_token),
                        settings.admin_listen.host, settings.admin_listen.port)
    await admin.start()  # with its limits (agent/core/serve.py)
    log.info("admin_listening address=%s", settings.admin_listen)

    stopped = asyncio.Event()  # nginx has quit: the access log has its last lines
    read_tasks: list[asyncio.Task[None]] = []
    try:
        try:
            outcome = await reconciler.start()
        except (ApplyError, NginxDied) as exc:
            log.error("start_failed error=%r", str(exc))
            return 1
        state.record(outcome)
        metrics.nginx_up.set(1)
        log.info("serving listen=%s routes=%d status=%r", settings.listen,
                 len(state.routes.routes), words(outcome))
        assert nginx.process is not None
        loop_task = asyncio.create_task(reconciler.run(stop), name="reconcile")
        nginx_task = asyncio.create_task(nginx.process.wait(), name="nginx")
        stop_task = asyncio.create_task(stop.wait(), name="stop")
        if reader is not None:
            read_tasks.append(asyncio.create_task(read_access_log(reader, stopped),
                                                  name="access-log"))
        if relay is not None:
            read_tasks.append(asyncio.create_task(read_access_log(relay, stopped, in_thread=True),
                                                  name="access-log-relay"))
        done, _ = await asyncio.wait({loop_task, nginx_task, stop_task},
                                     return_when=asyncio.FIRST_COMPLETED)
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await loop_task
        if nginx_task in done and stop_task not in done:
            metrics.nginx_up.set(0)
            log.error("nginx_died status=%s exiting=1", nginx.process.returncode)
            nginx.kill_leftovers()
            return 1
        await drain(nginx, state, settings, hurry)
        log.info("stopping: nginx finishes the requests in flight")
        code = await nginx.stop()
        metrics.nginx_up.set(0)
        log.info("stopped nginx_status=%s", code)
        return 0
    finally:
        stopped.set()
        if copier is not None:  # the last copy to stdout: what the output takes in seconds
            copier.deadline = time.monotonic() + LAST_COPY_SECONDS
        for task in read_tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if nginx.running:
            await nginx.stop()
        if sources is not None:
            await sources.close()
        if reconciler.resolver is not None:
            await reconciler.resolver.close()
        for each in (reader, relay):
            if each is not None:
                each.close()
        if spans is not None:  # the last lines' spans, a short wait at most
            await asyncio.to_thread(spans.close)
        await admin.close()
