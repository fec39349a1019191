"""Certificate checks both programs trust: parse PEM, match a key, follow a chain to a root,
check dates, names and usage. Pure: bytes and certificates in, problems (as text) out.

The gateway checks every certificate before nginx reads it (gateway/tls.py); the controller
checks what its ACME client obtained and what it kept (controller/acme.py).
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Sequence
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID

from agent.core.fields import HOST_RE

MIN_RSA_BITS = 2048
_PEM_END = b"-----END CERTIFICATE-----"

PrivateKey = (rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
              | ed448.Ed448PrivateKey)


def dns_names(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(n.lower().rstrip(".") for n in san.get_values_for_type(x509.DNSName))


def covers(name: str, host: str) -> bool:
    """Does a certificate name cover a host? `*.a.b` covers `x.a.b` (one label) and `*.a.b`."""
    name, host = name.lower(), host.lower()
    if name == host:
        return True
    if name.startswith("*.") and not host.startswith("*."):
        first, dot, parent = host.partition(".")
        return bool(dot) and bool(first) and parent == name[2:]
    return False


def describe(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or "(empty subject)"


def when(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _public(key: Any) -> bytes:
    return bytes(key.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo))


def check_key(leaf: x509.Certificate, key: PrivateKey) -> list[str]:
    problems = []
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size < MIN_RSA_BITS:
        problems.append(f"the RSA key has {key.key_size} bits; at least {MIN_RSA_BITS} needed")
    if _public(leaf.public_key()) != _public(key.public_key()):
        problems.append(f"the key does not match the certificate ({describe(leaf)})")
    return problems


def check_chain(chain: Sequence[x509.Certificate],
                roots: Callable[[x509.Name], Sequence[x509.Certificate]] | None,
                ) -> tuple[list[str], x509.Certificate | None]:
    """Each certificate issued by the next; the last a root or issued by one of `roots`.

    Returns the problems and the root the chain leads to (None when it is not known). With
    `roots` None (no CA bundle), a chain that does not end in a root is taken as it is.
    """
    problems = []
    for i in range(len(chain) - 1):
        if not _issued_by(chain[i], chain[i + 1]):
            problems.append(
                f"certificate {i + 1} of the file ({describe(chain[i])}) was not issued by "
                f"certificate {i + 2} ({describe(chain[i + 1])}): write the server's "
                "certificate first, then each issuer in order")
            return problems, None
    last = chain[-1]
    if last.issuer == last.subject and _issued_by(last, last):
        return problems, last
    if roots is None:
        return problems, None
    for root in roots(last.issuer):
        if _issued_by(last, root):
            return problems, root
    problems.append(f"the chain is incomplete: {describe(last)} was issued by "
                    f"{last.issuer.rfc4514_string()}, which is neither in the file nor a root "
                    "of --tls-ca-bundle (append the intermediate certificates to the file)")
    return problems, None


def check_dates(chain: Sequence[x509.Certificate], now: datetime.datetime) -> list[str]:
    problems = []
    for i, cert in enumerate(chain):
        which = "the certificate" if i == 0 else f"chain certificate {describe(cert)}"
        if now < cert.not_valid_before_utc:
            problems.append(f"{which} is not valid before {when(cert.not_valid_before_utc)}")
        elif now > cert.not_valid_after_utc:
            problems.append(f"{which} expired on {when(cert.not_valid_after_utc)}")
    return problems


def _host_name(name: str) -> bool:
    """A certificate's name is held to the rule of a route's host (agent.core.routes)."""
    return name.isascii() and len(name) <= 253 and HOST_RE.fullmatch(name) is not None


def check_names(leaf: x509.Certificate, hosts: Sequence[str]) -> list[str]:
    names = dns_names(leaf)
    if not names:
        return ["the certificate has no subjectAltName DNS names (clients ignore the CN)"]
    # its names end up in the configuration (and in /status): one that is not a host name is
    # refused with its certificate, which then serves none of its hosts, and no other host
    bad = [n for n in names if not _host_name(n)]
    if bad:
        shown = ", ".join(repr(n)[:80] for n in bad[:3]) + (", ..." if len(bad) > 3 else "")
        return [f"its subjectAltName has names that are not valid host names ({shown})"]
    missing = [h for h in hosts if not any(covers(n, h) for n in names)]
    if missing:
        return [f"its names ({', '.join(names)}) do not cover {', '.join(missing)}"]
    return []


def check_usage(leaf: x509.Certificate) -> list[str]:
    try:
        eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return []
    if ExtendedKeyUsageOID.SERVER_AUTH not in eku and \
            ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE not in eku:
        return ["the certificate is not for TLS servers (its extended key usage lacks "
                "serverAuth)"]
    return []


def ocsp_url(leaf: x509.Certificate) -> str | None:
    try:
        aia = leaf.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except x509.ExtensionNotFound:
        return None
    for desc in aia:
        if desc.access_method == AuthorityInformationAccessOID.OCSP and \
                isinstance(desc.access_location, x509.UniformResourceIdentifier):
            return str(desc.access_location.value)
    return None


def parse_chain(data: bytes) -> list[x509.Certificate]:
    if b"-----BEGIN" not in data:
        raise ValueError("not a PEM file (expected -----BEGIN CERTIFICATE-----)")
    try:
        chain = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise ValueError(f"cannot read the certificates: {exc}") from None
    if not chain:
        raise ValueError("no certificate in the file")
    return chain


def parse_key(data: bytes) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ValueError("the key is encrypted; give it without a passphrase") from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ValueError(f"not a PEM private key: {str(exc).splitlines()[0][:120]}") from None
    if not isinstance(key, PrivateKey):
        raise ValueError(f"unsupported key type {type(key).__name__}")
    return key


def load_roots(data: bytes) -> dict[x509.Name, list[x509.Certificate]]:
    """A CA bundle by subject; a certificate that does not parse is skipped."""
    out: dict[x509.Name, list[x509.Certificate]] = {}
    for block in data.split(_PEM_END):
        if b"-----BEGIN CERTIFICATE-----" not in block:
            continue
        try:
            cert = x509.load_pem_x509_certificate(block + _PEM_END + b"\n")
        except ValueError:
            continue
        out.setdefault(cert.subject, []).append(cert)
    return out
