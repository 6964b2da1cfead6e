"""Test certificates as PEM files that service users can read.

:class:`CertAuthority` wraps a ``trustme.CA`` and writes every issued certificate into a 0755
directory with 0644 files (the key too: Exim runs as Debian-exim, nginx workers as nobody, and a
0600 root key breaks them; these keys are throwaway). Besides the ordinary localhost leaf it
issues expired, not-yet-valid and wrong-name leaves; :func:`self_signed` makes a certificate no
CA vouches for.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import ssl
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from .common import require_binary, run_checked, service_dir, write_file

KeyType = Literal["rsa", "ecdsa"]
LOCAL_NAMES: tuple[str, ...] = ("localhost", "127.0.0.1")


@dataclass(frozen=True)
class CertFiles:
    """One server certificate on disk.

    ``cert`` holds the leaf followed by any intermediates; ``ca_cert`` is what a client must
    trust (the issuing root, or the certificate itself when self-signed).
    """

    cert: Path
    key: Path
    ca_cert: Path
    names: tuple[str, ...]

    def client_context(self, *, check_hostname: bool = True) -> ssl.SSLContext:
        """A client context trusting ``ca_cert`` only."""
        ctx = ssl.create_default_context(cafile=str(self.ca_cert))
        if not check_hostname:
            ctx.check_hostname = False
        return ctx


def _trustme_key_type(key_type: KeyType) -> trustme.KeyType:
    return trustme.KeyType.RSA if key_type == "rsa" else trustme.KeyType.ECDSA


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0)


class CertAuthority:
    """A throwaway CA writing its certificates below ``directory``."""

    def __init__(self, directory: Path, *, key_type: KeyType = "rsa") -> None:
        self.directory = directory
        self.key_type = key_type
        self.ca = trustme.CA(key_type=_trustme_key_type(key_type))
        self.ca_cert = write_file(directory / "ca.pem", self.ca.cert_pem.bytes())

    def issue(
        self,
        stem: str,
        identities: Sequence[str] = LOCAL_NAMES,
        *,
        common_name: str | None = None,
        not_before: datetime.datetime | None = None,
        not_after: datetime.datetime | None = None,
    ) -> CertFiles:
        """Issue a leaf for ``identities`` (DNS names / IP literals) as ``<stem>.pem/-key.pem``."""
        leaf = self.ca.issue_cert(
            *identities,
            common_name=common_name,
            not_before=not_before,
            not_after=not_after,
            key_type=_trustme_key_type(self.key_type),
        )
        chain = b"".join(blob.bytes() for blob in leaf.cert_chain_pems)
        cert = write_file(self.directory / f"{stem}.pem", chain)
        key = write_file(self.directory / f"{stem}-key.pem", leaf.private_key_pem.bytes())
        return CertFiles(cert=cert, key=key, ca_cert=self.ca_cert, names=tuple(identities))

    def localhost(self, stem: str = "localhost") -> CertFiles:
        """Valid now for ``localhost`` and ``127.0.0.1``."""
        return self.issue(stem, LOCAL_NAMES, common_name="localhost")

    def expired(self, stem: str = "expired", identities: Sequence[str] = LOCAL_NAMES) -> CertFiles:
        """Valid from 30 days ago until yesterday."""
        now = _utcnow()
        return self.issue(
            stem,
            identities,
            not_before=now - datetime.timedelta(days=30),
            not_after=now - datetime.timedelta(days=1),
        )

    def not_yet_valid(
        self, stem: str = "future", identities: Sequence[str] = LOCAL_NAMES
    ) -> CertFiles:
        """Valid from tomorrow for 30 days."""
        now = _utcnow()
        return self.issue(
            stem,
            identities,
            not_before=now + datetime.timedelta(days=1),
            not_after=now + datetime.timedelta(days=30),
        )

    def expiring_in(
        self,
        delta: datetime.timedelta,
        stem: str = "expiring",
        identities: Sequence[str] = LOCAL_NAMES,
    ) -> CertFiles:
        """Valid since yesterday, expiring ``delta`` from now (for expiry-warning probes)."""
        now = _utcnow()
        return self.issue(
            stem,
            identities,
            not_before=now - datetime.timedelta(days=1),
            not_after=now + delta,
        )

    def wrong_name(
        self, stem: str = "wrongname", identities: Sequence[str] = ("wrong.probed.test",)
    ) -> CertFiles:
        """Valid, trusted, but for a name that is neither localhost nor 127.0.0.1."""
        return self.issue(stem, identities, common_name=identities[0])


def _san(identities: Sequence[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for ident in identities:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(ident)))
        except ValueError:
            names.append(x509.DNSName(ident))
    return x509.SubjectAlternativeName(names)


def self_signed(
    directory: Path,
    stem: str = "selfsigned",
    identities: Sequence[str] = LOCAL_NAMES,
    *,
    key_type: KeyType = "rsa",
    days: int = 2,
) -> CertFiles:
    """A self-signed leaf (no CA). ``ca_cert`` is the certificate itself, to pin it if wanted."""
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    if key_type == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identities[0])])
    now = _utcnow()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(_san(identities), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path = write_file(directory / f"{stem}.pem", cert.public_bytes(serialization.Encoding.PEM))
    key_path = write_file(
        directory / f"{stem}-key.pem",
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    return CertFiles(cert=cert_path, key=key_path, ca_cert=cert_path, names=tuple(identities))


def dh_params(directory: Path, stem: str = "dh") -> Path:
    """RFC 7919 ffdhe2048 parameters (instant, unlike ``openssl dhparam``)."""
    path = directory / f"{stem}.pem"
    openssl = require_binary("openssl", "openssl")
    run_checked(
        [
            openssl,
            "genpkey",
            "-genparam",
            "-algorithm",
            "DH",
            "-pkeyopt",
            "dh_param:ffdhe2048",
            "-out",
            str(path),
        ],
        what="DH parameters",
    )
    path.chmod(0o644)
    return path


@contextlib.contextmanager
def cert_authority(key_type: KeyType = "rsa") -> Iterator[CertAuthority]:
    """A CA in its own 0755 temp dir (removed afterwards)."""
    with service_dir("certs") as directory:
        yield CertAuthority(directory, key_type=key_type)


def copy_cert(certs: CertFiles, directory: Path, stem: str = "server") -> CertFiles:
    """Copy cert, key and CA into ``directory`` (0644), e.g. next to a server's config."""
    cert = write_file(directory / f"{stem}.pem", certs.cert.read_bytes())
    key = write_file(directory / f"{stem}-key.pem", certs.key.read_bytes())
    ca = (
        cert
        if certs.ca_cert == certs.cert
        else write_file(directory / f"{stem}-ca.pem", certs.ca_cert.read_bytes())
    )
    return CertFiles(cert=cert, key=key, ca_cert=ca, names=certs.names)


def certs_for_server(directory: Path, certs: CertFiles | None, stem: str = "server") -> CertFiles:
    """``certs`` copied into ``directory``, or, if None, a fresh CA + localhost leaf there."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o755)
    if certs is not None:
        return copy_cert(certs, directory, stem)
    return CertAuthority(directory).localhost(stem)
