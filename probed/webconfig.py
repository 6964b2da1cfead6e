"""The web config file (``--web.config.file``): TLS and basic auth for every endpoint.

The format is the one Prometheus exporters share (exporter-toolkit), so operators can reuse
their files: ``tls_server_config`` (``cert_file``, ``key_file``, ``client_ca_file``,
``client_auth_type``, ``min_version``, ``max_version``) and ``basic_auth_users`` (user ->
bcrypt hash). Relative paths are relative to the file itself, so a file handed in with
systemd's ``LoadCredential=`` can name its key and certificate, credentials too.

bcrypt is slow on purpose (~50 ms at cost 10), far too slow for the event loop: checks run in
a thread, at most ``BCRYPT_SLOTS`` at a time, and a successful check is remembered per
(user, hash), so a scraper that sends the same password every second pays for bcrypt once.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import re
import secrets
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Self

import bcrypt
import structlog
import yaml
from aiohttp import hdrs, web
from aiohttp.typedefs import Handler, Middleware
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from probed.config import ConfigError, pydantic_problems

log = structlog.get_logger("probed.web")

TLSVersionName = Literal["TLS10", "TLS11", "TLS12", "TLS13"]
TLS_VERSIONS: dict[str, ssl.TLSVersion] = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
ClientAuthType = Literal[
    "NoClientCert",
    "RequestClientCert",
    "RequireAnyClientCert",
    "VerifyClientCertIfGiven",
    "RequireAndVerifyClientCert",
]
_VERIFY_MODES: dict[str, ssl.VerifyMode] = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
# exporter-toolkit keys probed knows but does not implement: a clear message beats
# 'unknown key'.
_UNSUPPORTED: dict[tuple[str, ...], str] = {
    ("tls_server_config", "cipher_suites"): "OpenSSL's default cipher suites apply",
    ("tls_server_config", "curve_preferences"): "OpenSSL's default groups apply",
    ("tls_server_config", "prefer_server_cipher_suites"): "OpenSSL's default applies",
    ("tls_server_config", "client_allowed_sans"): "any cert client_ca_file signed passes",
    ("tls_server_config", "cert"): "use cert_file",
    ("tls_server_config", "key"): "use key_file",
    ("http_server_config",): "probed serves HTTP/1.1 and sets no extra headers",
    ("rate_limit",): "put a reverse proxy in front of probed",
}
_BCRYPT_HASH = re.compile(r"\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}")
BCRYPT_SLOTS = 2
REALM = "probed"


class TLSServerSection(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    cert_file: str
    key_file: str
    client_auth_type: ClientAuthType = "NoClientCert"
    client_ca_file: str | None = None
    min_version: TLSVersionName = "TLS12"
    max_version: TLSVersionName = "TLS13"

    @field_validator("client_auth_type")
    @classmethod
    def _verifying(cls, value: str) -> str:
        if value not in _VERIFY_MODES:
            raise ValueError(
                f'"{value}" is not supported: probed always verifies client certificates '
                '(use "VerifyClientCertIfGiven" or "RequireAndVerifyClientCert")'
            )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.client_auth_type != "NoClientCert" and self.client_ca_file is None:
            raise ValueError(f'client_auth_type "{self.client_auth_type}" needs client_ca_file')
        if self.client_ca_file is not None and self.client_auth_type == "NoClientCert":
            raise ValueError(
                "client_ca_file is set but client_auth_type is not "
                '(use "RequireAndVerifyClientCert")'
            )
        if TLS_VERSIONS[self.min_version] > TLS_VERSIONS[self.max_version]:
            raise ValueError(f"min_version {self.min_version} is above max_version")
        return self


class WebConfigDocument(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    tls_server_config: TLSServerSection | None = None
    basic_auth_users: dict[str, str] | None = None


class BasicAuth:
    """Checks ``Authorization: Basic`` against bcrypt hashes without stalling the loop."""

    def __init__(self, users: Mapping[str, str]) -> None:
        self._users = {user: hashed.encode() for user, hashed in users.items()}
        # An unknown user still costs one bcrypt, so response times do not reveal names.
        cost = min(int(h[4:6]) for h in users.values())
        self._dummy = bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(cost))
        # What is remembered is a keyed digest of the password, never the password.
        self._key = secrets.token_bytes(32)
        self._verified: dict[tuple[str, bytes], bytes] = {}
        self._slots: asyncio.Semaphore | None = None

    async def check(self, header: str | None) -> str | None:
        """The authenticated user name, or None."""
        credentials = _parse_basic(header)
        if credentials is None:
            return None
        user, password = credentials
        hashed = self._users.get(user)
        digest = hmac.digest(self._key, password, hashlib.sha256)
        if hashed is not None:
            known = self._verified.get((user, hashed))
            if known is not None and hmac.compare_digest(known, digest):
                return user
        if self._slots is None:
            self._slots = asyncio.Semaphore(BCRYPT_SLOTS)
        async with self._slots:
            ok = await asyncio.to_thread(_checkpw, password, hashed or self._dummy)
        if not ok or hashed is None:
            return None
        self._verified[(user, hashed)] = digest
        return user

    def middleware(self) -> Middleware:
        @web.middleware
        async def basic_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
            if await self.check(request.headers.get(hdrs.AUTHORIZATION)) is None:
                log.debug("unauthorized request", path=request.path, peer=request.remote)
                return web.Response(
                    status=401,
                    text="Unauthorized\n",
                    headers={hdrs.WWW_AUTHENTICATE: f'Basic realm="{REALM}", charset="UTF-8"'},
                )
            return await handler(request)

        return basic_auth


def _parse_basic(header: str | None) -> tuple[str, bytes] | None:
    if not header:
        return None
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(b":")
    if not sep:
        return None
    try:
        return user.decode(), password
    except UnicodeDecodeError:
        return None


def _checkpw(password: bytes, hashed: bytes) -> bool:
    try:
        return bcrypt.checkpw(password, hashed)
    except ValueError:  # bcrypt >= 5 refuses passwords over 72 bytes; so does Go's
        return False


@dataclass(frozen=True, slots=True)
class WebConfig:
    path: Path
    ssl_context: ssl.SSLContext | None
    auth: BasicAuth | None

    @property
    def middlewares(self) -> tuple[Middleware, ...]:
        return (self.auth.middleware(),) if self.auth is not None else ()

    def describe(self) -> str:
        tls = "off"
        if self.ssl_context is not None:
            tls = "on" if self.ssl_context.verify_mode == ssl.CERT_NONE else "on, client certs"
        return f"tls {tls}, basic auth {'on' if self.auth else 'off'}"


def load(path: str | Path) -> WebConfig:
    """Read and validate a web config file; ConfigError names the file and every key."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read: {exc.strerror}"]) from None
    except UnicodeDecodeError:
        raise ConfigError(str(path), ["not UTF-8 text"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), [f"invalid YAML: {exc}".replace("\n", " ")]) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(str(path), ["top level: expected a mapping"])
    problems = _unsupported(raw)
    if problems:
        raise ConfigError(str(path), problems)
    try:
        doc = WebConfigDocument.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(str(path), pydantic_problems(exc, WebConfigDocument)) from None
    problems = [f"basic_auth_users.{u}: {p}" for u, p in _user_problems(doc.basic_auth_users)]
    ctx = None
    if doc.tls_server_config is not None:
        ctx = _ssl_context(doc.tls_server_config, path.parent, problems)
    if problems:
        raise ConfigError(str(path), problems)
    auth = BasicAuth(doc.basic_auth_users) if doc.basic_auth_users else None
    return WebConfig(path=path, ssl_context=ctx, auth=auth)


def _unsupported(raw: dict[str, Any]) -> list[str]:
    problems = []
    for keys, advice in _UNSUPPORTED.items():
        parent: Any = raw
        for key in keys[:-1]:
            parent = parent.get(key) if isinstance(parent, dict) else None
        if isinstance(parent, dict) and keys[-1] in parent:
            problems.append(f"{'.'.join(keys)}: not supported by probed ({advice})")
    return problems


def _user_problems(users: dict[str, str] | None) -> list[tuple[str, str]]:
    problems = []
    for user, hashed in (users or {}).items():
        if not user or ":" in user:
            problems.append((user, "a user name must be non-empty and have no colon"))
        elif not _BCRYPT_HASH.fullmatch(hashed):
            problems.append((user, 'not a bcrypt hash (want "$2y$10$...", as htpasswd -nBC 10)'))
    return problems


def _read_pem(base: Path, name: str, key: str, marker: bytes, problems: list[str]) -> Path | None:
    path = base / name
    try:
        data = path.read_bytes()
    except OSError as exc:
        problems.append(f"tls_server_config.{key}: cannot read {path}: {exc.strerror}")
        return None
    if marker not in data:
        problems.append(f"tls_server_config.{key}: {path} holds no PEM {marker.decode().lower()}")
        return None
    return path


def _ssl_context(tls: TLSServerSection, base: Path, problems: list[str]) -> ssl.SSLContext | None:
    cert = _read_pem(base, tls.cert_file, "cert_file", b"CERTIFICATE", problems)
    key = _read_pem(base, tls.key_file, "key_file", b"PRIVATE KEY", problems)
    ca = None
    if tls.client_ca_file is not None:
        ca = _read_pem(base, tls.client_ca_file, "client_ca_file", b"CERTIFICATE", problems)
    if cert is None or key is None or (tls.client_ca_file is not None and ca is None):
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = TLS_VERSIONS[tls.min_version]
    ctx.maximum_version = TLS_VERSIONS[tls.max_version]
    try:
        ctx.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        problems.append(
            f"tls_server_config.key_file: cannot use {key} with {cert}: {exc.reason or exc}"
        )
        return None
    ctx.verify_mode = _VERIFY_MODES[tls.client_auth_type]
    if ca is not None:
        try:
            ctx.load_verify_locations(cafile=ca)
        except ssl.SSLError as exc:
            problems.append(f"tls_server_config.client_ca_file: {ca}: {exc.reason or exc}")
            return None
    return ctx
