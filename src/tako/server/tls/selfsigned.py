"""Self-signed certificates: for routed hosts whose real certificate is not issued yet, and no-SNI clients."""

from __future__ import annotations

import datetime
import ipaddress

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

VALID_DAYS = 30


def generate(name: str, *, days: int = VALID_DAYS) -> tuple[bytes, bytes]:
    """PEM certificate and PEM private key (EC P-256) for `name`, valid from an hour ago for `days`."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name[:64])])
    san: x509.GeneralName
    try:
        san = x509.IPAddress(ipaddress.ip_address(name.strip("[]")))
    except ValueError:
        san = x509.DNSName(name)
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([san]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert_pem, key_pem


if __name__ == "__main__":  # `python -m tako.server.tls.selfsigned NAME`: certificate PEM, then key PEM
    import sys

    cert_pem, key_pem = generate(sys.argv[1])
    sys.stdout.buffer.write(cert_pem + key_pem)
