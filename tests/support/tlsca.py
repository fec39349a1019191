"""A certificate authority made by the tests: a root, an intermediate, and server certificates.

Server certificates are issued by the intermediate, so that a file without the intermediate is
an incomplete chain, as with a real CA. Clients trust the root only (`client_context()`).
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

NOW = datetime.datetime.now(datetime.UTC)
DAY = datetime.timedelta(days=1)
Key = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "swarm-gateway tests"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _general_name(name: str) -> x509.GeneralName:
    """An IP address as an IP name (clients check those for an address), else a DNS name."""
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: Key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@dataclass(frozen=True)
class Issued:
    """A server certificate with its key and the chain up to (not including) the root."""

    cert: x509.Certificate
    key: Key
    chain: tuple[x509.Certificate, ...]  # the issuers, intermediate first

    @property
    def chain_pem(self) -> bytes:
        return b"".join(_pem(c) for c in (self.cert, *self.chain))

    @property
    def leaf_pem(self) -> bytes:
        return _pem(self.cert)

    @property
    def key_pem(self) -> bytes:
        return key_pem(self.key)

    @property
    def serial(self) -> int:
        return self.cert.serial_number

    def write(self, directory: Path, stem: str, *, chain: bool = True) -> tuple[Path, Path]:
        """`stem.crt` (leaf and intermediate, or the leaf alone) and `stem.key`."""
        crt, key = directory / f"{stem}.crt", directory / f"{stem}.key"
        crt.write_bytes(self.chain_pem if chain else self.leaf_pem)
        key.write_bytes(self.key_pem)
        return crt, key


class TestCA:
    __test__ = False  # not a test class, whatever pytest thinks of the name

    def __init__(self, name: str = "Test") -> None:
        self.root_key = ec.generate_private_key(ec.SECP256R1())
        self.root = self._ca(_name(f"{name} Root CA"), self.root_key, None, None)
        self.intermediate_key = ec.generate_private_key(ec.SECP256R1())
        self.intermediate = self._ca(_name(f"{name} Intermediate CA"), self.intermediate_key,
                                     self.root, self.root_key)

    @staticmethod
    def _ca(name: x509.Name, key: Key, issuer: x509.Certificate | None,
            issuer_key: Key | None) -> x509.Certificate:
        builder = (x509.CertificateBuilder()
                   .subject_name(name)
                   .issuer_name(issuer.subject if issuer else name)
                   .public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(NOW - DAY)
                   .not_valid_after(NOW + 3650 * DAY)
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                   .add_extension(x509.KeyUsage(
                       digital_signature=True, key_cert_sign=True, crl_sign=True,
                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                       key_agreement=False, encipher_only=False, decipher_only=False),
                       critical=True)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                                  critical=False))
        return builder.sign(issuer_key or key, hashes.SHA256())

    @property
    def root_pem(self) -> bytes:
        return _pem(self.root)

    def issue(self, *names: str, not_before: datetime.datetime | None = None,
              not_after: datetime.datetime | None = None, ocsp: str | None = None,
              rsa_bits: int | None = None, server_auth: bool = True) -> Issued:
        key: Key = (rsa.generate_private_key(65537, rsa_bits) if rsa_bits
                    else ec.generate_private_key(ec.SECP256R1()))
        builder = (x509.CertificateBuilder()
                   .subject_name(_name(names[0]))
                   .issuer_name(self.intermediate.subject)
                   .public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(not_before or NOW - DAY)
                   .not_valid_after(not_after or NOW + 90 * DAY)
                   .add_extension(x509.SubjectAlternativeName(
                       [_general_name(n) for n in names]), critical=False)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None),
                                  critical=True)
                   .add_extension(x509.ExtendedKeyUsage(
                       [ExtendedKeyUsageOID.SERVER_AUTH if server_auth
                        else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                       self.intermediate_key.public_key()), critical=False))
        if ocsp:
            builder = builder.add_extension(x509.AuthorityInformationAccess([
                x509.AccessDescription(AuthorityInformationAccessOID.OCSP,
                                       x509.UniformResourceIdentifier(ocsp))]), critical=False)
        cert = builder.sign(self.intermediate_key, hashes.SHA256())
        return Issued(cert, key, (self.intermediate,))

    def client_context(self, **kw: object) -> ssl.SSLContext:
        """A client that trusts this CA's root only and checks host names."""
        ctx = ssl.create_default_context(cadata=self.root_pem.decode())
        for k, v in kw.items():
            setattr(ctx, k, v)
        return ctx

    def write_bundle(self, path: Path, extra: Sequence[x509.Certificate] = ()) -> Path:
        path.write_bytes(self.root_pem + b"".join(_pem(c) for c in extra))
        return path
