"""PowerDNS (Debian `pdns-server` with `pdns-backend-sqlite3`), a real authoritative DNS
server on loopback with its HTTP API on: dns-lexicon's `powerdns` provider writes the DNS-01
records through that API, as it would through any provider's, and Pebble reads them over DNS.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import subprocess
import urllib.request
from pathlib import Path

from tests.support import DnsServerProcess, free_port, missing, require_programs, wait_until

SCHEMA = Path("/usr/share/pdns-backend-sqlite3/schema/schema.sqlite3.sql")


class PowerDns(DnsServerProcess):
    """`pdns_server` with a private sqlite database, one native zone, and the API on."""

    program = "pdns_server"

    def __init__(self, workdir: Path, zone: str, address: str = "127.0.0.1") -> None:
        self.paths = require_programs("pdns_server")
        if not SCHEMA.exists():
            missing("pdns-backend-sqlite3 is not installed (scripts/setup.sh test installs it)")
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir, self.zone, self.address = workdir, zone, address
        self.port = free_port(address)
        self.api_port = free_port(address)
        self.api_key = secrets.token_hex(16)
        self.database = workdir / "pdns.sqlite3"
        with sqlite3.connect(self.database) as db:
            db.executescript(SCHEMA.read_text())
        self.log_file = workdir / "pdns.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def nameserver(self) -> str:
        return f"{self.address}:{self.port}"

    @property
    def api_url(self) -> str:
        return f"http://{self.address}:{self.api_port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.paths["pdns_server"], "--no-config", "--daemon=no", "--guardian=no",
             "--disable-syslog", "--log-timestamp=no", "--loglevel=4",
             "--security-poll-suffix=",  # no query about its version to the Internet
             f"--socket-dir={self.workdir}", "--launch=gsqlite3",
             f"--gsqlite3-database={self.database}", f"--local-address={self.address}",
             f"--local-port={self.port}", "--api=yes", f"--api-key={self.api_key}",
             "--webserver=yes", f"--webserver-address={self.address}",
             f"--webserver-port={self.api_port}", "--webserver-allow-from=127.0.0.0/8"],
            stdout=self.log_file.open("ab"), stderr=subprocess.STDOUT)
        wait_until(lambda: self._api("GET", "/api/v1/servers/localhost") is not None, 20,
                   f"PowerDNS's API to answer; log:\n{self.log()}")
        self._api("POST", "/api/v1/servers/localhost/zones", {
            "name": f"{self.zone}.", "kind": "Native", "nameservers": [f"ns1.{self.zone}."]})
        wait_until(lambda: self.txt("ready-check." + self.zone) == [], 10,
                   "PowerDNS to answer for the zone")

    def _api(self, method: str, path: str, body: object = None) -> object | None:
        request = urllib.request.Request(
            self.api_url + path, method=method, headers={"X-API-Key": self.api_key},
            data=json.dumps(body).encode() if body is not None else None)
        try:
            with urllib.request.urlopen(request, timeout=3) as resp:
                text = resp.read().decode()
        except OSError:
            return None
        return json.loads(text) if text else {}

