"""`gateway-agent controller`: start the controller (docs/labels.md)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading

from agent.controller.acme import AcmeManager
from agent.controller.acme_client import Client
from agent.controller.app import make_app
from agent.controller.dns01 import Dns01
from agent.controller.dnsproviders import (
    Lexicon,
    Provider,
    Rfc2136,
    read_credentials,
    read_tsig_key,
)
from agent.controller.docker import Docker
from agent.controller.metrics import ControllerMetrics
from agent.controller.routesfile import RoutesFile
from agent.controller.settings import ControllerSettings
from agent.controller.sync import Controller
from agent.core.serve import AdminServer
from agent.core.settings import SettingsError, read_token

log = logging.getLogger("agent.controller")


def _dns01(settings: ControllerSettings) -> Dns01 | None:
    """The DNS provider of DNS-01, its secrets read (and checked) now: a wrong file stops the
    start with a message naming it, never at the first order."""
    s = settings
    kind = s.acme_dns_provider
    errors = []
    if kind is None:
        if s.acme_challenge == "dns-01":
            errors.append("--acme-challenge dns-01 needs --acme-dns-provider")
        for flag, value in (("--acme-dns-server", s.acme_dns_server),
                            ("--acme-dns-tsig-key-file", s.acme_dns_tsig_key_file),
                            ("--acme-dns-credentials-file", s.acme_dns_credentials_file)):
            if value is not None:
                errors.append(f"{flag} needs --acme-dns-provider")
    elif kind == "rfc2136" and s.acme_dns_server is None:
        errors.append("--acme-dns-provider rfc2136 needs --acme-dns-server (the primary "
                      "server that takes the updates)")
    elif kind == "rfc2136" and s.acme_dns_credentials_file is not None:
        errors.append("--acme-dns-credentials-file is for lexicon providers; rfc2136 takes "
                      "--acme-dns-tsig-key-file")
    elif kind != "rfc2136" and s.acme_dns_tsig_key_file is not None:
        errors.append("--acme-dns-tsig-key-file is for rfc2136; a lexicon provider takes "
                      "--acme-dns-credentials-file")
    if errors:
        raise SettingsError("; ".join(errors))
    if kind is None:
        return None
    provider: Provider
    try:
        if kind == "rfc2136":
            assert s.acme_dns_server is not None
            key = read_tsig_key(s.acme_dns_tsig_key_file) if s.acme_dns_tsig_key_file else None
            provider = Rfc2136(s.acme_dns_server, key, s.acme_dns_zone)
        else:
            options = read_credentials(s.acme_dns_credentials_file) \
                if s.acme_dns_credentials_file else {}
            lexicon = Lexicon(kind.partition(":")[2], options, s.acme_dns_zone,
                              s.acme_dns_server)
            lexicon.check()
            provider = lexicon
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
    log.info("acme_dns_on provider=%r challenge_for_names=%s zones=%s", provider.description,
             s.acme_challenge, ",".join(s.acme_dns_zone) or "from the DNS")
    return Dns01(provider, s.acme_dns_propagation_timeout)


def _acme(settings: ControllerSettings, metrics: ControllerMetrics) -> AcmeManager | None:
    if settings.acme_directory is None:
        return None
    client = Client(settings.acme_directory, settings.acme_state_dir, settings.acme_email,
                    settings.acme_ca_bundle, challenges={}, dns=_dns01(settings),
                    dns_all=settings.acme_challenge == "dns-01")
    return AcmeManager(client, settings.acme_state_dir, metrics.registry,
                       renew_before=settings.acme_renew_before * 86400,
                       retry_min=settings.acme_retry_min)


async def run(settings: ControllerSettings) -> int:
    token = None
    if settings.controller_token_file is not None:
        token = read_token(settings.controller_token_file)
    elif settings.zone_token_files:
        raise SettingsError("--zone-token-files needs --controller-token-file (the token of "
                            "every zone)")
    elif settings.acme_directory is not None:
        raise SettingsError("--acme-directory needs --controller-token-file: the controller "
                            "sends the certificates' private keys to the gateways that show "
                            "the token, and to no one else")
    metrics = ControllerMetrics()
    acme = _acme(settings, metrics)
    docker_api = Docker(settings.docker_url)
    controller = Controller(docker_api.list_services, metrics, prefix=settings.label_prefix,
                            resync_interval=settings.resync_interval,
                            list_running=docker_api.list_running,
                            new_service_wait=settings.new_service_wait, token=token,
                            zone_tokens=tuple((z, read_token(f, "--zone-token-files"))
                                              for z, f in settings.zone_token_files),
                            acme=acme,
                            file_routes=RoutesFile(settings.routes) if settings.routes else None)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    listen = settings.controller_listen
    server = AdminServer(make_app(controller), listen.host, listen.port)
    try:
        await server.start()  # with its limits (agent/core/serve.py)
    except OSError as exc:
        log.error("listen_failed address=%s error=%r", listen, str(exc))
        return 1
    log.info("controller_listening address=%s docker=%s prefix=%s", listen,
             settings.docker_url, settings.label_prefix)
    watcher = threading.Thread(target=docker_api.follow, args=(loop, controller),
                               name="docker-events", daemon=True)
    watcher.start()
    watch_task = asyncio.create_task(controller.watch_file(stop), name="routes-file")
    acme_task = None
    if acme is not None:
        log.info("acme_on directory=%s state_dir=%s", settings.acme_directory,
                 settings.acme_state_dir)
        controller.acme_wanted()
        acme_task = asyncio.create_task(acme.run(stop), name="acme")
    try:
        await controller.run(stop)
    finally:
        watch_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch_task
        if acme_task is not None:
            acme_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await acme_task
        controller.close()
        docker_api.close()
        await server.close()
    log.info("controller_stopped")
    return 0
