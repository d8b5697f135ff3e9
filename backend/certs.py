"""TLS for the hub's API where labs reach it through a login node.

Compute nodes reach the hub's API through a port on a login node (the tunnel
service's reverse forward, ``ssh.hub_forward``). Anybody logged in there could
take that port while the forward is down and wait for a lab's hub token. So the
tunnel service serves the port with TLS, and every lab trusts, besides the
system's own CAs, the CA the site names (``hub_forward.tls.ca_file``): an
impostor on the port fails the lab's handshake before any token is sent.

A site may bring its own CA and certificate; ``hub_forward_tls`` (the command
``lablink hub-forward-tls``) makes a private CA and a certificate for the names
the labs use, and renews the certificate when the names change or it nears its
end. Private keys are written 0600 into a 0700 directory.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .files import private_dir

CA_DAYS = 3650
CERT_DAYS = 825
RENEW_BEFORE = datetime.timedelta(days=30)
MAX_CA_FILE = 64 << 10  # bytes: a handful of certificates


@dataclass(frozen=True)
class HubForwardFiles:
    """The files of one hub forward's TLS: what the tunnel service serves
    (``cert_file``, ``key_file``) and what labs trust (``ca_file``)."""

    cert_file: Path
    key_file: Path
    ca_file: Path

    def settings(self) -> dict[str, str]:
        """The ``hub_forward.tls`` block of a site file."""
        return {
            "cert_file": str(self.cert_file),
            "key_file": str(self.key_file),
            "ca_file": str(self.ca_file),
        }


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _names(hosts: list[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _covers(cert: x509.Certificate, hosts: list[str]) -> bool:
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    return set(_names(hosts)) <= set(sans)


def _load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    ca_file, ca_key = directory / "ca.pem", directory / "ca.key"
    if not (ca_file.exists() and ca_key.exists()):
        return None
    cert = x509.load_pem_x509_certificate(ca_file.read_bytes())
    key = serialization.load_pem_private_key(ca_key.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or cert.not_valid_after_utc < _now():
        return None
    return cert, key


def _new_ca(directory: Path, label: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{label} hub-forward CA")])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_private(directory / "ca.key", _key_pem(key))
    (directory / "ca.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


def _new_cert(
    directory: Path, hosts: list[str], ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(min(now + datetime.timedelta(days=CERT_DAYS), ca.not_valid_after_utc))
        .add_extension(x509.SubjectAlternativeName(_names(hosts)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_private(directory / "key.pem", _key_pem(key))
    (directory / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def hub_forward_tls(directory: Path, hosts: list[str], label: str = "Lablink") -> HubForwardFiles:
    """A CA and a server certificate for ``hosts`` (names or addresses) in
    ``directory``: kept when they exist and fit, else made (the CA is kept while it
    is valid, so labs that trust it keep working when the certificate is renewed)."""
    if not hosts:
        raise ValueError("at least one host name or address is needed")
    private_dir(directory)
    files = HubForwardFiles(directory / "cert.pem", directory / "key.pem", directory / "ca.pem")
    found = _load_ca(directory)
    if found is None:
        ca, ca_key = _new_ca(directory, label)
    else:
        ca, ca_key = found
    if files.cert_file.exists() and files.key_file.exists():
        cert = x509.load_pem_x509_certificate(files.cert_file.read_bytes())
        fresh = cert.not_valid_after_utc - RENEW_BEFORE > _now()
        if fresh and cert.issuer == ca.subject and _covers(cert, hosts):
            return files
    _new_cert(directory, hosts, ca, ca_key)
    return files


def read_ca(path: str | Path) -> str:
    """The certificates of a CA file as PEM text, each checked (the text goes into
    the labs' start script); ValueError with a sentence for the admin otherwise."""
    file = Path(path)
    try:
        with file.open("rb") as handle:
            data = handle.read(MAX_CA_FILE + 1)
    except OSError as exc:
        raise ValueError(f"cannot read the CA file {file}: {exc.strerror or exc}") from None
    if len(data) > MAX_CA_FILE:
        raise ValueError(f"the CA file {file} is larger than {MAX_CA_FILE} bytes")
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ValueError(f"the CA file {file} holds no PEM certificate") from None
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode("ascii") for c in certs)
