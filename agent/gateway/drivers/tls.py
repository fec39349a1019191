"""HTTPS certificates: find the files a route names, validate them, keep what nginx may read.

A route with a `tls` block names its certificate in one of two ways (see core/fields.py):

- `certificate: NAME` (and `key: NAME`): files in --certs-dir, in a swarm the docker secrets
  under /run/secrets;
- no name: for each host `H` of the route, `H.crt` and `H.key` in --certs-dir, or else the
  wildcard pair of its parent domain, `_wildcard.PARENT.crt` and `_wildcard.PARENT.key`.

Before nginx sees a certificate it is checked: the files parse (PEM), the key is not encrypted
and matches the first certificate, each certificate of the chain is issued by the next one, the
last one is a root or was issued by a root of --tls-ca-bundle (else the chain is incomplete),
every certificate is within its validity period, and the names cover the hosts it serves.

A certificate that passes is copied to a directory the agent owns under a name made from its
content (`<digest>.crt`, `<digest>.key`), and the configuration points at the copy: nginx reads
exactly the bytes that were checked, a replaced file gives a new name and thus a new
configuration (the next cycle reloads nginx, whose old workers finish their connections), and the
files of the configuration serving now stay until a newer one has been applied (rollback).

A certificate that fails is refused for the hosts it would serve, never for the others: those
hosts get no HTTPS server (nginx refuses their TLS handshake), their plain HTTP does what the
route says (it still redirects if the route asks for that). When a certificate that was in use
is replaced by one that fails, the last good one keeps serving and the problem is reported, as a
bad routes file is on a live change: a pair of files replaced one after the other never makes
a host lose HTTPS in between.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from agent.core.fields import Tls
from agent.core.files import FileStamp, stamp, write_atomic
from agent.core.routes import RouteTable
from agent.core.x509 import (
    check_chain,
    check_dates,
    check_key,
    check_names,
    check_usage,
    dns_names,
    load_roots,
    ocsp_url,
    parse_chain,
    parse_key,
    when,
)
from agent.gateway.model import CertFiles, HostTls, Served, TlsPlan

log = logging.getLogger("agent.gateway.tls")

WILDCARD_PREFIX = "_wildcard."  # `*.example.com` as a file name: `_wildcard.example.com.crt`


# -- values ----------------------------------------------------------------------------------


# -- files -----------------------------------------------------------------------------------


def candidates(host: str) -> list[str]:
    """File stems for a host in directory mode: its own, then its parent's wildcard."""
    if host.startswith("*."):
        return [WILDCARD_PREFIX + host[2:]]
    _, dot, parent = host.partition(".")
    return [host, WILDCARD_PREFIX + parent] if dot else [host]


def cert_files(tls: Tls, host: str, certs_dir: Path) -> CertFiles:
    """The files that hold the certificate of `host` under this `tls` block."""
    if tls.acme:
        return CertFiles(f"{host}.crt", f"{host}.key", acme=True)
    if tls.certificate is not None:
        return CertFiles(tls.certificate, tls.key_name)
    stems = candidates(host)
    for stem in stems:
        if (certs_dir / f"{stem}.crt").exists():
            return CertFiles(f"{stem}.crt", f"{stem}.key")
    return CertFiles(f"{stems[0]}.crt", f"{stems[0]}.key")


@dataclass(frozen=True)
class _Pair:
    """A certificate file and its key, read and checked apart from any host or time."""

    digest: str
    chain: tuple[x509.Certificate, ...]
    chain_pem: bytes
    key_pem: bytes
    trusted_pem: bytes | None
    problems: tuple[str, ...]


def _write(path: Path, data: bytes, mode: int) -> None:
    if path.exists():
        return  # named by its content: already there means already right
    write_atomic(path, data, mode)


class Certificates:
    """Reads, checks and stores certificates; `plan()` once per cycle, `applied()` after."""

    def __init__(self, certs_dir: Path, store_dir: Path, ca_bundle: Path | None,
                 clock: Callable[[], float] = time.time, acme_dir: Path | None = None) -> None:
        self.certs_dir = certs_dir
        self.acme_dir = acme_dir  # where drivers/source.py writes the controller's certificates
        self.store_dir = store_dir
        self.ca_bundle = ca_bundle
        self.clock = clock
        self._pairs: dict[CertFiles, tuple[tuple[FileStamp | None, ...], _Pair | str]] = {}
        self._good: dict[tuple[CertFiles, str], Served] = {}  # last good per source and host
        self._logged: dict[str, tuple[str | None, str | None]] = {}
        self._roots: tuple[FileStamp | None, dict[x509.Name, list[x509.Certificate]] | None] = (
            None, None)
        self._roots_warned = False

    # -- the CA bundle ---------------------------------------------------------------------

    def _root_index(self) -> dict[x509.Name, list[x509.Certificate]] | None:
        if self.ca_bundle is None:
            return None
        current = stamp(self.ca_bundle)
        if current is None:
            if not self._roots_warned:
                log.warning("tls_ca_bundle_missing file=%s effect=%r", self.ca_bundle,
                            "chains that do not end in a root are not checked for completeness")
                self._roots_warned = True
            return None
        if self._roots[0] != current:
            try:
                self._roots = (current, load_roots(self.ca_bundle.read_bytes()))
            except OSError as exc:
                log.warning("tls_ca_bundle_unreadable file=%s error=%r", self.ca_bundle, str(exc))
                return None
        return self._roots[1]

    # -- one pair of files -----------------------------------------------------------------

    def _read(self, source: CertFiles) -> _Pair | str:
        if source.acme and self.acme_dir is None:
            return ("tls: acme: this gateway has no --routes-url; ACME certificates come from "
                    "the controller")
        directory = self.acme_dir if source.acme and self.acme_dir is not None else \
            self.certs_dir
        cert_path = directory / source.certificate
        key_path = directory / source.key
        if source.acme and not cert_path.exists():
            return (f"{source.certificate}: no certificate from the controller's ACME client "
                    "yet (its /status tells why)")
        stamps = (stamp(cert_path), stamp(key_path),
                  stamp(self.ca_bundle) if self.ca_bundle is not None else None)
        cached = self._pairs.get(source)
        if cached is not None and cached[0] == stamps and None not in stamps[:2]:
            return cached[1]
        result = self._load(cert_path, key_path, trust_chain=source.acme)
        self._pairs[source] = (stamps, result)
        return result

    def _load(self, cert_path: Path, key_path: Path, trust_chain: bool = False) -> _Pair | str:
        """`trust_chain`: the chain as the CA sent it (ACME), whatever root it leads to: a
        staging CA's root is in no bundle, and a gateway has no say in what the CA issues."""
        try:
            chain_data = cert_path.read_bytes()
        except FileNotFoundError:
            return f"{cert_path.name}: not found in {cert_path.parent}"
        except OSError as exc:
            return f"{cert_path.name}: cannot read: {exc.strerror}"
        try:
            key_data = key_path.read_bytes()
        except FileNotFoundError:
            return f"{key_path.name}: the key is not found in {key_path.parent}"
        except OSError as exc:
            return f"{key_path.name}: cannot read: {exc.strerror}"
        try:
            chain = parse_chain(chain_data)
        except ValueError as exc:
            return f"{cert_path.name}: {exc}"
        try:
            key = parse_key(key_data)
        except ValueError as exc:
            return f"{key_path.name}: {exc}"
        problems = check_key(chain[0], key) + check_usage(chain[0])
        roots = None if trust_chain else self._root_index()
        chain_problems, root = check_chain(
            chain, (lambda name: roots.get(name, [])) if roots is not None else None)
        problems += chain_problems
        pem = serialization.Encoding.PEM
        chain_pem = b"".join(c.public_bytes(pem) for c in chain)
        key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        issuers = [*chain[1:], *([root] if root is not None and root not in chain else [])]
        trusted = b"".join(c.public_bytes(pem) for c in issuers) if root is not None else None
        digest = hashlib.sha256(chain_pem + b"\0" + key_pem).hexdigest()[:24]
        return _Pair(digest, tuple(chain), chain_pem, key_pem, trusted, tuple(problems))

    def _serve(self, pair: _Pair, name: str) -> Served:
        """Write the checked bytes where nginx reads them; named by their digest."""
        self.store_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        chain = self.store_dir / f"{pair.digest}.crt"
        key = self.store_dir / f"{pair.digest}.key"
        _write(chain, pair.chain_pem, 0o644)
        _write(key, pair.key_pem, 0o600)
        leaf = pair.chain[0]
        issuer_known = len(pair.chain) > 1 or pair.trusted_pem is not None
        stapling = ocsp_url(leaf) is not None and issuer_known and \
            leaf.issuer != leaf.subject
        trusted = None
        if stapling and pair.trusted_pem:
            trusted = self.store_dir / f"{pair.digest}.trusted.pem"
            _write(trusted, pair.trusted_pem, 0o644)
        return Served(pair.digest, name, chain, key, dns_names(leaf),
                      leaf.not_valid_after_utc.timestamp(), stapling, trusted)

    # -- every host --------------------------------------------------------------------------

    def plan(self, table: RouteTable) -> TlsPlan | None:
        """What HTTPS serves for each host of a route with `tls`; None when no route has it.
        The files are read again each time: a certificate replaced on disk is seen."""
        wanted = table.tls_hosts
        if not wanted:
            return None
        now = datetime.datetime.fromtimestamp(self.clock(), datetime.UTC)
        hosts = []
        for host, tls in sorted(wanted.items()):
            source = cert_files(tls, host, self.certs_dir)
            error, served = self._check(source, host, now)
            if served is not None:
                self._good[(source, host)] = served
            else:
                served = self._good.get((source, host))
            hosts.append(HostTls(host, source, tls.redirect, tls.hsts, served, error))
            self._log(host, source, served, error)
        return TlsPlan(tuple(hosts))

    def _check(self, source: CertFiles, host: str, now: datetime.datetime,
               ) -> tuple[str | None, Served | None]:
        pair = self._read(source)
        if isinstance(pair, str):
            return pair, None
        problems = [*pair.problems, *check_names(pair.chain[0], [host]),
                    *check_dates(pair.chain, now)]
        if problems:
            return f"{source.certificate}: " + "; ".join(problems), None
        try:
            return None, self._serve(pair, source.certificate)
        except OSError as exc:
            return f"{source.certificate}: cannot store a copy in {self.store_dir}: {exc}", None

    def _log(self, host: str, source: CertFiles, served: Served | None, error: str | None) -> None:
        now = (served.digest if served else None, error)
        if self._logged.get(host) == now:
            return
        self._logged[host] = now
        if error is None and served is not None:
            log.info("certificate_in_use host=%s certificate=%s expires=%s", host,
                     source.certificate, when(datetime.datetime.fromtimestamp(
                         served.not_after, datetime.UTC)))
        elif served is not None:
            log.error("certificate_refused host=%s certificate=%s error=%r keeping=%s", host,
                      source.certificate, error, served.name)
        else:
            log.error("certificate_refused host=%s certificate=%s error=%r https=off", host,
                      source.certificate, error)

    def applied(self, plan: TlsPlan | None) -> None:
        """After `plan` serves: remove the copies that no configuration refers to any more."""
        keep = {h.served.digest for h in (plan.hosts if plan else ()) if h.served}
        self._good = {k: v for k, v in self._good.items() if v.digest in keep}
        if plan is not None:
            in_plan = {h.host for h in plan.hosts}
            self._logged = {h: v for h, v in self._logged.items() if h in in_plan}
        try:
            entries = list(self.store_dir.iterdir())
        except FileNotFoundError:
            return
        for entry in entries:
            if entry.name.split(".", 1)[0] not in keep:
                with contextlib.suppress(OSError):
                    entry.unlink()


def store_dir(nginx_prefix: Path | None, nginx_conf_dir: Path) -> Path:
    """Where the checked copies live: beside the configuration nginx reads."""
    if nginx_prefix is not None:
        return nginx_prefix.absolute() / "tls"
    return nginx_conf_dir / "gateway-tls"
