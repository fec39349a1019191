"""BIND 9 (Debian `bind9`), a real authoritative DNS server on loopback that takes RFC 2136
dynamic updates signed with a TSIG key the test makes (`tsig-keygen`), for DNS-01 end to end:
the controller writes the `_acme-challenge` TXT records into it, and Pebble (`-dnsserver`)
reads them from it.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.support import DnsServerProcess, free_port, require_programs, wait_until


def tsig_key(name: str) -> str:
    """A new TSIG key in BIND's format, as `tsig-keygen` writes it (a swarm secret's text)."""
    paths = require_programs("tsig-keygen")
    return subprocess.run([paths["tsig-keygen"], "-a", "hmac-sha256", name], check=True,
                          capture_output=True, text=True).stdout


class Bind(DnsServerProcess):
    """`named` with a private configuration: one zone, updates allowed with one TSIG key.

    `address` must be one of an interface's own (named listens on those only): 127.0.0.1,
    on a port of its own."""

    program = "named"

    def __init__(self, workdir: Path, zone: str, key_text: str, address: str,
                 records: str = "") -> None:
        self.paths = require_programs("named")
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir, self.zone, self.address = workdir, zone, address
        self.port = free_port(address)
        self.log_file = workdir / "named.log"
        (workdir / "tsig.key").write_text(key_text)
        key_name = key_text.split('"')[1]
        (workdir / f"{zone}.zone").write_text(
            f"$TTL 60\n@ IN SOA ns1.{zone}. hostmaster.{zone}. 1 60 60 600 60\n"
            f"@ IN NS ns1.{zone}.\nns1 IN A {address}\n{records}")
        self.config = workdir / "named.conf"
        self.config.write_text(f"""
include "{workdir}/tsig.key";
options {{
    directory "{workdir}";
    pid-file "{workdir}/named.pid";
    listen-on port {self.port} {{ {address}; }};
    listen-on-v6 {{ none; }};
    recursion no;
    dnssec-validation no;
    notify no;
    allow-query {{ any; }};
}};
controls {{ }};
zone "{zone}" {{
    type primary;
    file "{workdir}/{zone}.zone";
    allow-update {{ key "{key_name}"; }};
}};
""")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def nameserver(self) -> str:
        return f"{self.address}:{self.port}"

    def start(self) -> None:
        user = ["-u", "root"] if os.geteuid() == 0 else []
        self.proc = subprocess.Popen(
            [self.paths["named"], "-g", "-4", "-c", str(self.config), *user],
            stdout=self.log_file.open("ab"), stderr=subprocess.STDOUT)
        wait_until(lambda: self.txt("ready-check." + self.zone) == [], 20,
                   f"named to answer; log:\n{self.log()}")

