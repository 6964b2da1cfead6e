"""TLS settings, contexts and the facts every TLS-speaking probe exports. Written once.

Facts come from the ``ssl.SSLObject`` after the handshake, or after a failed verification:
the chain the server sent is still readable then, so expiry is exported even when the
certificate is expired, self-signed or for another name.
"""

from __future__ import annotations

import hashlib
import os
import ssl
from typing import Any, Literal

from pydantic import field_validator

from probed.probes.base import Env, Family, Reason, Settings
from probed.probes.stream import Stream, StreamError
from probed.results import Recorder

EARLIEST_EXPIRY = Family(
    "probe_ssl_earliest_cert_expiry",
    "Earliest NotAfter (Unix time) of the certificates the server presented.",
)
LAST_CHAIN_EXPIRY = Family(
    "probe_ssl_last_chain_expiry_timestamp_seconds",
    "Earliest NotAfter (Unix time) in the chain of the last handshake.",
)
LAST_CHAIN_INFO = Family(
    "probe_ssl_last_chain_info", "Facts of the leaf certificate of the last handshake."
)
TLS_VERSION = Family("probe_tls_version_info", "The TLS version the last handshake negotiated.")
TLS_CIPHER = Family("probe_tls_cipher_info", "The cipher suite the last handshake negotiated.")
TLS_VERIFIED = Family(
    "probe_tls_certificate_verified",
    "Whether the certificate chain and name were verified (1) or not (0, or verification off).",
)
FAMILIES = (
    EARLIEST_EXPIRY,
    LAST_CHAIN_EXPIRY,
    LAST_CHAIN_INFO,
    TLS_VERSION,
    TLS_CIPHER,
    TLS_VERIFIED,
)

# ssl.Certificate.public_bytes() takes _ssl.ENCODING_DER, which the ssl module does not
# re-export on 3.11.
_ENCODING_DER = 2

_MIN_VERSION = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
_VERSION_LABEL = {
    "TLSv1": "TLS 1.0",
    "TLSv1.1": "TLS 1.1",
    "TLSv1.2": "TLS 1.2",
    "TLSv1.3": "TLS 1.3",
    "SSLv3": "SSL 3.0",
}
# OpenSSL X509_V_ERR_* codes -> the reasons operators act on.
_VERIFY_REASON = {
    9: Reason.TLS_CERT_NOT_YET_VALID,
    10: Reason.TLS_CERT_EXPIRED,
    18: Reason.TLS_CERT_SELF_SIGNED,
    19: Reason.TLS_CERT_SELF_SIGNED,
    2: Reason.TLS_CERT_UNKNOWN_ISSUER,
    20: Reason.TLS_CERT_UNKNOWN_ISSUER,
    21: Reason.TLS_CERT_UNKNOWN_ISSUER,
    62: Reason.TLS_CERT_NAME_MISMATCH,
    64: Reason.TLS_CERT_NAME_MISMATCH,
}


class TLSSettings(Settings):
    """``tls_config`` of any module (blackbox_exporter's names where they exist)."""

    insecure_skip_verify: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    server_name: str | None = None
    min_version: Literal["TLS10", "TLS11", "TLS12", "TLS13"] | None = None

    @field_validator("ca_file", "cert_file", "key_file")
    @classmethod
    def _readable(cls, value: str | None) -> str | None:
        if value is not None and not os.access(value, os.R_OK):
            raise ValueError(f'cannot read "{value}"')
        return value


def build_context(settings: TLSSettings) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=settings.ca_file)
    if settings.insecure_skip_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if settings.cert_file is not None:
        ctx.load_cert_chain(settings.cert_file, settings.key_file)
    if settings.min_version is not None:
        version = _MIN_VERSION[settings.min_version]
        if version < ssl.TLSVersion.TLSv1_2:
            # OpenSSL 3 refuses TLS < 1.2 at its default security level; a monitor must
            # still be able to reach (and report) such old servers when asked to.
            ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        ctx.minimum_version = version
    return ctx


def context_for(env: Env, settings: TLSSettings) -> ssl.SSLContext:
    """One context per distinct TLS setting, built once (context building is costly)."""
    return env.ssl_context(settings, lambda: build_context(settings))


def _chain(obj: ssl.SSLObject, verified: bool) -> list[Any]:
    # Python 3.13 makes these public; 3.11 has them on the C object.
    inner = getattr(obj, "_sslobj", obj)
    name = "get_verified_chain" if verified else "get_unverified_chain"
    getter = getattr(inner, name, None) or getattr(obj, name, None)
    try:
        return list(getter() or []) if getter is not None else []
    except (ssl.SSLError, ValueError):
        return []


def _name(parts: Any) -> str:
    return ",".join(f"{_SHORT.get(k, k)}={v}" for rdn in parts or () for k, v in rdn)


_SHORT = {
    "commonName": "CN",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "localityName": "L",
    "stateOrProvinceName": "ST",
}


def record_facts(rec: Recorder, obj: ssl.SSLObject, verified: bool) -> None:
    version = obj.version()
    if version:
        rec.set(TLS_VERSION, 1.0, version=_VERSION_LABEL.get(version, version))
    cipher = obj.cipher()
    if cipher:
        rec.set(TLS_CIPHER, 1.0, cipher=cipher[0])
    rec.set(TLS_VERIFIED, 1.0 if verified else 0.0)
    presented = _chain(obj, verified=False)
    if not presented:
        return
    infos = [cert.get_info() for cert in presented]
    expiries = [ssl.cert_time_to_seconds(i["notAfter"]) for i in infos if "notAfter" in i]
    if expiries:
        rec.set(EARLIEST_EXPIRY, float(min(expiries)))
    chain = _chain(obj, verified=True) if verified else presented
    chain_expiries = [ssl.cert_time_to_seconds(c.get_info()["notAfter"]) for c in chain] or expiries
    rec.set(LAST_CHAIN_EXPIRY, float(min(chain_expiries)))
    leaf = infos[0]
    sans = ",".join(v for _, v in leaf.get("subjectAltName", ()))
    rec.set(
        LAST_CHAIN_INFO,
        1.0,
        fingerprint_sha256=hashlib.sha256(presented[0].public_bytes(_ENCODING_DER)).hexdigest(),
        subject=_name(leaf.get("subject")),
        issuer=_name(leaf.get("issuer")),
        subjectalternative=sans,
        serialnumber=str(leaf.get("serialNumber", "")).lower(),
    )


def verify_reason(exc: ssl.SSLCertVerificationError) -> Reason:
    return _VERIFY_REASON.get(exc.verify_code, Reason.TLS_CERT_INVALID)


async def handshake(
    stream: Stream,
    env: Env,
    settings: TLSSettings,
    default_name: str,
    rec: Recorder,
    *,
    facts: bool = True,
) -> bool:
    """TLS on ``stream`` (phase ``tls``); False with a reason on failure. Records the
    chain's facts on failed verification always, after success when ``facts`` (False: the
    caller records them for the connection that counts, e.g. a redirect's last hop)."""
    context = context_for(env, settings)
    server_name = settings.server_name or default_name
    with rec.phase("tls"):
        try:
            await stream.start_tls(context, server_name, offload=env.tls_offload())
        except ssl.SSLCertVerificationError as exc:
            if stream.tls is not None:
                record_facts(rec, stream.tls, verified=False)
            return rec.fail(verify_reason(exc), f"certificate: {exc.verify_message}")
        except ssl.SSLError as exc:
            return rec.fail(Reason.TLS_HANDSHAKE, f"TLS handshake: {exc.reason or exc}")
        except StreamError as exc:
            return rec.fail(exc.reason, exc.detail)
    assert stream.tls is not None
    if facts:
        record_facts(rec, stream.tls, verified=context.verify_mode != ssl.CERT_NONE)
    rec.debug("tls established", version=stream.tls.version(), cipher=stream.tls.cipher())
    return True
