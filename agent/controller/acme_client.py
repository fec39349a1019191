"""The ACME protocol for the controller: the `acme` package (certbot's), blocking, used from a
thread one call at a time; and the certificate it returns, checked (controller/acme.py decides
what to order and when)."""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from agent import __version__
from agent.controller.dns01 import Dns01, Record
from agent.controller.dnsproviders import DnsError
from agent.core.files import write_atomic
from agent.core.wire import Certificate
from agent.core.x509 import check_key, check_names, parse_chain, parse_key

log = logging.getLogger("agent.controller.acme")

ORDER_TIMEOUT = 90.0  # seconds an order may take, challenges and finalisation included
ERROR_MAX = 300


@dataclass(frozen=True)
class Issued(Certificate):
    """A certificate this controller holds for a host, with its validity (checked)."""

    not_before: float = 0.0
    not_after: float = 0.0

    def renew_at(self, renew_before: float) -> float:
        """`renew_before` seconds before expiry; a certificate whose lifetime is not at least
        twice that (a short-lived one) when a third of its lifetime is left (6 days: after 4)."""
        lifetime = self.not_after - self.not_before
        lead = renew_before if 2 * renew_before <= lifetime else lifetime / 3
        return self.not_after - lead


def issued_from_pem(host: str, chain: str, key: str) -> Issued:
    """Check a stored or received pair (parses, key matches, names the host); ValueError."""
    certs = parse_chain(chain.encode())
    problems = check_key(certs[0], parse_key(key.encode())) + check_names(certs[0], [host])
    if problems:
        raise ValueError("; ".join(problems))
    leaf = certs[0]
    return Issued(host, chain, key, leaf.not_valid_before_utc.timestamp(),
                  leaf.not_valid_after_utc.timestamp())


def describe_error(exc: BaseException) -> str:
    """One line for /status and the log: what the ACME server said, not a traceback."""
    from acme import errors, messages

    if isinstance(exc, errors.ValidationError):
        parts = []
        for authzr in exc.failed_authzrs:
            for chall in authzr.body.challenges:
                if chall.error is not None:
                    parts.append(f"{authzr.body.identifier.value}: {chall.error.typ}: "
                                 f"{chall.error.detail}")
        text = "validation failed: " + ("; ".join(parts) or "no detail")
    elif isinstance(exc, messages.Error):
        text = f"{exc.typ}: {exc.detail}"
    elif isinstance(exc, DnsError):
        text = str(exc)  # names its place, holds no secret
    elif isinstance(exc, errors.TimeoutError):
        text = f"the order did not complete within {ORDER_TIMEOUT:g}s"
    else:
        text = f"{type(exc).__name__}: {exc}"
    text = " ".join(text.split())
    return text if len(text) <= ERROR_MAX else text[: ERROR_MAX - 3] + "..."


class Client:
    """The blocking ACME protocol (the `acme` package), used from a thread, one call at a time.

    `challenges` is shared with the HTTP handler: token -> key authorization, while an order
    waits for validation. With `dns`, wildcard hosts (and every host with `dns_all`) are
    validated by DNS-01 instead: TXT records written through `dns`.
    """

    def __init__(self, directory_url: str, state_dir: Path, email: str | None,
                 ca_bundle: Path | None, challenges: dict[str, str],
                 dns: Dns01 | None = None, dns_all: bool = False) -> None:
        self.directory_url = directory_url
        self.dns, self.dns_all = dns, dns_all
        self.state_dir = state_dir
        self.email = email
        self.ca_bundle = ca_bundle
        self.challenges = challenges
        self.account_uri: str | None = None
        self._client: Any = None

    @property
    def account_key_file(self) -> Path:
        return self.state_dir / "account.key"

    def _account_key(self) -> rsa.RSAPrivateKey:
        """The account key: made once and kept, so that a restart is the same account."""
        try:
            key = serialization.load_pem_private_key(self.account_key_file.read_bytes(), None)
            if isinstance(key, rsa.RSAPrivateKey):
                return key
            log.warning("acme_account_key_replaced file=%s reason='not an RSA key'",
                        self.account_key_file)
        except FileNotFoundError:
            pass
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(self.account_key_file, key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()), 0o600)
        log.info("acme_account_key_created file=%s", self.account_key_file)
        return key

    def connect(self) -> Any:
        """The directory, and the account (registered, or found again by its key)."""
        if self._client is not None:
            return self._client
        from acme import client, errors, messages
        from josepy.jwk import JWKRSA

        net = client.ClientNetwork(JWKRSA(key=self._account_key()),
                                   user_agent=f"swarm-gateway/{__version__}", timeout=30)
        if self.ca_bundle is not None:
            net.verify_ssl = str(self.ca_bundle)  # type: ignore[assignment]  # requests' verify
        directory = client.ClientV2.get_directory(self.directory_url, net)
        acme = client.ClientV2(directory, net)
        registration = messages.NewRegistration.from_data(
            email=self.email, terms_of_service_agreed=True)
        try:
            account = acme.new_account(registration)
            log.info("acme_account_registered uri=%s", account.uri)
        except errors.ConflictError as exc:  # the key is already an account: use it
            account = messages.RegistrationResource(uri=exc.location,
                                                    body=messages.Registration())
            net.account = account
            log.info("acme_account_found uri=%s", account.uri)
        self.account_uri = str(account.uri)
        self._client = acme
        return acme

    def forget(self) -> None:
        """After a failure: connect again next time (the server may have restarted)."""
        self._client = None

    def challenge(self, host: str) -> str:
        """The challenge `host` is validated with: dns-01 for a wildcard (the only one a CA
        allows for it) and, with `dns_all`, for every host; http-01 otherwise."""
        return "dns-01" if host.startswith("*.") or (self.dns and self.dns_all) else "http-01"

    def unorderable(self, host: str) -> str | None:
        """Why `host` cannot be ordered with these settings (None: it can), before any order
        spends the CA's limits."""
        if self.challenge(host) == "dns-01" and self.dns is None:
            return ("a wildcard certificate needs a DNS-01 challenge: give the controller "
                    "--acme-dns-provider (docs/acme.md)")
        return None

    def order(self, host: str) -> Issued:
        """Order a certificate for `host` with a new key; raises on any failure."""
        from acme import challenges, crypto_util, messages

        kind = challenges.DNS01 if self.challenge(host) == "dns-01" else challenges.HTTP01
        dns = self.dns
        if kind is challenges.DNS01 and dns is None:
            raise ValueError(self.unorderable(host))
        acme = self.connect()
        key = ec.generate_private_key(ec.SECP256R1())
        key_pem = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        order = acme.new_order(crypto_util.make_csr(key_pem, [host]))
        tokens: list[str] = []
        records: list[Record] = []
        try:
            answers = []
            for authz in order.authorizations:
                if authz.body.status == messages.STATUS_VALID:
                    continue  # validated recently: the server reuses it
                chall = next((c for c in authz.body.challenges
                              if isinstance(c.chall, kind)), None)
                if chall is None:
                    raise ValueError(f"the ACME server offers no {kind.typ} challenge for {host}")
                response, validation = chall.response_and_validation(acme.net.key)
                if dns is not None and kind is challenges.DNS01:
                    name = chall.chall.validation_domain_name(authz.body.identifier.value)
                    records.append(dns.present(host, name, validation))
                else:
                    token = chall.chall.encode("token")
                    self.challenges[token] = validation
                    tokens.append(token)
                answers.append((chall, response))
            if dns is not None and records:
                dns.wait_visible(records)
            for chall, response in answers:
                acme.answer_challenge(chall, response)
            deadline = datetime.datetime.now() + datetime.timedelta(seconds=ORDER_TIMEOUT)
            done = acme.poll_and_finalize(order, deadline)
        finally:
            for token in tokens:
                self.challenges.pop(token, None)
            if dns is not None and records:
                dns.remove(records)
        return issued_from_pem(host, done.fullchain_pem, key_pem.decode())
