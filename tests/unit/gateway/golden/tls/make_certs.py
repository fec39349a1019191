"""Makes this case's certificates once (they are committed: the golden output names their
copies by content). Valid 2026-2126. Run: python make_certs.py (from this folder)."""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

START = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
END = datetime.datetime(2126, 1, 1, tzinfo=datetime.UTC)
HERE = Path(__file__).parent


def name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def ca(cn: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate | None,
       issuer_key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    return (x509.CertificateBuilder().subject_name(name(cn))
            .issuer_name(issuer.subject if issuer else name(cn))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(START).not_valid_after(END)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False,
                                         False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(issuer_key, hashes.SHA256()))


def main() -> None:
    root_key, mid_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(
        ec.SECP256R1())
    root = ca("Golden Root CA", root_key, None, root_key)
    mid = ca("Golden Intermediate CA", mid_key, root, root_key)
    (HERE / "ca.pem").write_bytes(pem(root))
    leaves = {"shop.example.com": (["shop.example.com"], None),
              "_wildcard.example.com": (["*.example.com"], None),
              "site": (["site.example.com", "www.site.example.com"], None),
              "stapled.example.com": (["stapled.example.com"], "http://ocsp.example.com/")}
    for stem, (names, ocsp) in leaves.items():
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder().subject_name(name(names[0]))
                   .issuer_name(mid.subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(START).not_valid_after(END)
                   .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                                  critical=False)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None),
                                  critical=True)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                                  critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                       mid_key.public_key()), critical=False))
        if ocsp:
            builder = builder.add_extension(x509.AuthorityInformationAccess([
                x509.AccessDescription(AuthorityInformationAccessOID.OCSP,
                                       x509.UniformResourceIdentifier(ocsp))]), critical=False)
        cert = builder.sign(mid_key, hashes.SHA256())
        crt = f"{stem}.pem" if stem == "site" else f"{stem}.crt"
        key_name = "site-key.pem" if stem == "site" else f"{stem}.key"
        (HERE / "certs" / crt).write_bytes(pem(cert) + pem(mid))
        (HERE / "certs" / key_name).write_bytes(key_pem(key))


if __name__ == "__main__":
    main()
