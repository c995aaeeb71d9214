"""The certificate of a node's TLS listener, made once and pinned by its SHA-256.

Clients never check a node's certificate against certificate authorities:
they pin the SHA-256 of the DER certificate, which the registry records
when the node proves (inside a TLS connection) that it holds its identity
key, and which the signed directory then carries.  So a self-signed
certificate is all a node needs, and it must stay the same across restarts,
or every pin out there breaks.

When ``--tls-listen`` is given without ``--tls-cert/--tls-key``, the node
makes an ECDSA P-256 key (what every TLS stack speaks) and a self-signed
certificate valid for 20 years in its state directory (the key with mode
0600), and loads them on every later start.  An explicit certificate may
hold a chain; the first certificate is the one the node presents.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import ipaddress
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Final

from resistance.errors import ConfigError
from resistance.paths import write_atomic, write_private

if TYPE_CHECKING:
    from cryptography import x509

# cryptography's X.509 and EC modules load in the functions that use them (a node
# without a TLS listener never does): importing them costs a node's start ~15 ms.

CERT_FILE: Final = "node-tls-cert.pem"
KEY_FILE: Final = "node-tls-key.pem"


def default_name() -> str:
    """A random host name for a node without a public host, as Tor names its link
    certificates (``www.<8-20 letters>.net``): a fixed name such as "resist-node"
    in every certificate would let a censor find nodes by it."""
    import secrets
    import string

    length = 8 + secrets.randbelow(13)
    return "www." + "".join(secrets.choice(string.ascii_lowercase) for _ in range(length)) + ".net"


VALID_DAYS: Final = 20 * 365


def certificate_sha256(der: bytes) -> str:
    """The pin of a certificate: lowercase hex SHA-256 of its DER bytes."""
    return hashlib.sha256(der).hexdigest()


@functools.cache
def pinning_client_context() -> ssl.SSLContext:
    """TLS to a node, trusting no CA: the caller checks the certificate's pin (the
    client) or has the node sign it in a challenge (the registry).

    One context for every connection (made once: building one costs ~130 µs, and a
    client dials for each of its users' connections); nobody changes it after."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def leaf_der(cert_path: Path) -> bytes:
    """The DER bytes of the first certificate in a PEM file (the one TLS presents)."""
    try:
        data = cert_path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read TLS certificate {cert_path}: {exc.strerror}") from None
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        chain = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ConfigError(f"{cert_path} holds no PEM certificate") from None
    return chain[0].public_bytes(serialization.Encoding.DER)


def _subject_name(common_name: str) -> x509.GeneralName:
    from cryptography import x509

    try:
        return x509.IPAddress(ipaddress.ip_address(common_name))
    except ValueError:
        return x509.DNSName(common_name)


def make_self_signed(
    common_name: str, *, now: datetime.datetime | None = None
) -> tuple[bytes, bytes]:
    """A new key and self-signed certificate, both PEM: ``(cert, key)``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = now or datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64])])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName([_subject_name(common_name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def ensure_certificate(state_dir: Path, *, common_name: str | None) -> tuple[Path, Path, bool]:
    """The generated certificate and key in ``state_dir``, made on first use.

    Returns ``(cert_path, key_path, created)``.  An existing pair is kept even
    if the common name would now be different: the pin matters, not the name.
    """
    cert_path, key_path = state_dir / CERT_FILE, state_dir / KEY_FILE
    have_cert, have_key = cert_path.exists(), key_path.exists()
    if have_cert and have_key:
        return cert_path, key_path, False
    if have_cert != have_key:
        present, missing = (cert_path, key_path) if have_cert else (key_path, cert_path)
        raise ConfigError(
            f"{present} is there but {missing} is not: remove {present} to make a new "
            "certificate (its pin changes), or put the missing file back"
        )
    cert_pem, key_pem = make_self_signed(common_name or default_name())
    write_private(key_path, key_pem.decode())  # the key first: a cert alone is refused above
    write_atomic(cert_path, cert_pem, mode=0o644)
    return cert_path, key_path, True
