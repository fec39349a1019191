"""Pebble, Let's Encrypt's ACME test server (Debian package `pebble`), on loopback.

Pebble validates HTTP-01 challenges for real: it looks the name up in the DNS server it is given
(`-dnsserver`) and fetches http://NAME:HTTP_PORT/.well-known/acme-challenge/TOKEN from the
address it found. The package ships no certificate for Pebble's own HTTPS listener, so the
tests make one (tests/support/tlsca.py) and give the ACME client its CA.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import urllib.request
from pathlib import Path

from tests.support import ServerProcess, free_port, require_programs, wait_until
from tests.support.tlsca import TestCA


class Pebble(ServerProcess):
    def __init__(self, workdir: Path, dns_server: str, http_port: int,
                 address: str = "127.0.0.1", names: tuple[str, ...] = ("localhost",),
                 validity: int | None = None) -> None:
        """Pebble on `address`, its HTTPS certificate for `names` (and the address); the
        certificates it issues valid for `validity` seconds (Pebble's default: 5 years)."""
        self.paths = require_programs("pebble")
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.address = address
        self.name = names[0]
        listener_ca = TestCA("Pebble listener")
        crt, key = listener_ca.issue(*names, address).write(workdir, "listener")
        self.ca_bundle = listener_ca.write_bundle(workdir / "listener-ca.pem")
        self._context = ssl.create_default_context(cafile=str(self.ca_bundle))
        self.port = free_port(address)
        self.management_port = free_port(address)
        self.config = workdir / "pebble.json"
        self.config.write_text(json.dumps({"pebble": {
            "listenAddress": f"{address}:{self.port}",
            "managementListenAddress": f"{address}:{self.management_port}",
            "certificate": str(crt), "privateKey": str(key),
            "httpPort": http_port, "tlsPort": free_port(),
            "ocspResponderURL": "", "externalAccountBindingRequired": False,
            **({"certificateValidityPeriod": validity} if validity else {})}}))
        self.dns_server = dns_server
        self.log_file = workdir / "pebble.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def directory_url(self) -> str:
        """As an ACME client names it (the name its certificate is for)."""
        return f"https://{self.name}:{self.port}/dir"

    def start(self) -> None:
        env = {**os.environ,
               "PEBBLE_VA_NOSLEEP": "1",  # validate at once, not after a random sleep
               "PEBBLE_WFE_NONCEREJECT": "0",  # no random badNonce answers
               "PEBBLE_AUTHZREUSE": "0"}  # every order is validated through a gateway again
        self.proc = subprocess.Popen(
            [self.paths["pebble"], "-config", str(self.config), "-dnsserver", self.dns_server],
            stdout=self.log_file.open("ab"), stderr=subprocess.STDOUT, env=env)
        wait_until(lambda: self._get(f"https://{self.address}:{self.port}/dir"), 20,
                   "Pebble to answer")

    def _get(self, url: str) -> str | None:
        try:
            with urllib.request.urlopen(url, context=self._context, timeout=2) as resp:
                return str(resp.read().decode())
        except OSError:
            return None

    def root_pem(self) -> str:
        """The root Pebble issues under (made anew at each start)."""
        pem = self._get(f"https://{self.address}:{self.management_port}/roots/0")
        assert pem, "Pebble's management interface did not give its root"
        return pem
