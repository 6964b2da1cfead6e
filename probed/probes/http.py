"""``http``: one request (plus redirects) per run, blackbox-style, over our own stream.

A target is a URL, optionally pinned to a server: ``https://shop.example/cart via web1``
asks ``web1`` (an address or a host name) for the site ``shop.example``, with ``Host`` and
the TLS server name (SNI) of the site. That checks each virtual host of a shared server on
that server, whatever DNS says. We always resolve the destination ourselves (the ``resolve``
phase, ``ip_protocol`` preference), so a pinned and an unpinned target take the same path.

HTTP/1.1 is spoken directly on the shared ``Stream`` (connect, TLS on our own SSL object,
bounded reads) with llhttp parsing the response (probed/probes/httpwire.py): a new
connection per run (each run measures its own connect and handshake), ``Connection:
close``, no cookies, no decompression unless a module asks for it (``compression``). An
aiohttp client did the same for 1.4x the CPU per GET (0.66 against 0.47 CPU-ms;
benchmarks/RESULTS.md, "Fleet scale", change 10).

Phases follow blackbox_exporter (``probe_http_duration_seconds{phase}``), summed over the
redirect hops: ``resolve`` (our DNS lookup), ``connect`` (TCP), ``tls`` (the handshake),
``processing`` (request sent to parsed response headers; blackbox stops at the first byte),
``transfer`` (headers to the end of the body).
"""

from __future__ import annotations

import base64
import email.utils
import re
import ssl
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Self

from pydantic import BeforeValidator, Field, PrivateAttr, field_validator, model_validator
from yarl import URL

import probed
from probed.probes.base import Env, Family, ProbeSpec, Reason, Settings, Target
from probed.probes.httpwire import Headers, Response, request_head
from probed.probes.stream import Stream, StreamError, connect, resolve
from probed.probes.tlsfacts import FAMILIES as TLS_FAMILIES
from probed.probes.tlsfacts import TLSSettings, handshake, record_facts
from probed.results import Recorder
from probed.secrets import Secret, SecretError, SecretRef
from probed.targets import parse_host_port

PHASES = Family(
    "probe_http_duration_seconds",
    "Duration of each phase (resolve, connect, tls, processing, transfer) of the last run, "
    "summed over redirects.",
)
STATUS_CODE = Family("probe_http_status_code", "Response HTTP status code.")
CONTENT_LENGTH = Family(
    "probe_http_content_length", "Length of the response body as announced (-1 if unknown)."
)
BODY_LENGTH = Family(
    "probe_http_uncompressed_body_length", "Length of the response body as read (bytes)."
)
REDIRECTS = Family("probe_http_redirects", "The number of redirects followed.")
SSL_USED = Family("probe_http_ssl", "Whether the final response came over TLS (1) or not (0).")
VERSION = Family("probe_http_version", "The HTTP version of the response (1.0, 1.1).")
LAST_MODIFIED = Family(
    "probe_http_last_modified_timestamp_seconds", "The Last-Modified header (Unix time)."
)
FAILED_DUE_TO_REGEX = Family(
    "probe_failed_due_to_regex", "Whether a header or body regular expression failed the run."
)
PHASE_NAMES = ("resolve", "connect", "tls", "processing", "transfer")
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_DEFAULT_PORTS = {"http": 80, "https": 443}
_METHOD = re.compile(r"[A-Z][A-Z0-9_-]*")
_SIZE = re.compile(r"(\d+)\s*(B|KB|KiB|MB|MiB|GB|GiB)?")
_SIZE_UNITS = {
    "B": 1,
    "KB": 10**3,
    "KiB": 2**10,
    "MB": 10**6,
    "MiB": 2**20,
    "GB": 10**9,
    "GiB": 2**30,
}
_USERINFO = re.compile(r"://[^/@\s]*@")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
READ_LIMIT = 65536
_TARGET = re.compile(r"(?P<url>\S+)(?:\s+via\s+(?P<via>\S+))?")


def _byte_size(value: object) -> int:
    """``1048576``, ``"512KiB"``, ``"10MiB"``, ``"1MB"`` -> bytes."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = _SIZE.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f'expected a size such as 65536, "512KiB" or "10MiB", got {value!r}')
    return int(match.group(1)) * _SIZE_UNITS[match.group(2) or "B"]


ByteSize = Annotated[int, BeforeValidator(_byte_size)]


def _header_items(value: object) -> object:
    # A table in TOML, kept as sorted pairs: settings must stay hashable (they key caches).
    if isinstance(value, dict):
        return tuple(sorted((str(k), v) for k, v in value.items()))
    return value


def _status_ranges(codes: tuple[int | str, ...]) -> tuple[tuple[int, int], ...]:
    ranges = []
    for code in codes:
        text = str(code).strip().lower()
        if re.fullmatch(r"[1-5]xx", text):
            low = int(text[0]) * 100
            ranges.append((low, low + 99))
            continue
        low_text, _, high_text = text.partition("-")
        if not low_text.isdigit() or (high_text and not high_text.isdigit()):
            raise ValueError(f'invalid status code "{code}" (write 200, "2xx" or "200-299")')
        low, high = int(low_text), int(high_text or low_text)
        if not 100 <= low <= high <= 599:
            raise ValueError(f'invalid status code "{code}" (100-599)')
        ranges.append((low, high))
    return tuple(ranges) or ((200, 299),)


def _compile(pattern: str) -> re.Pattern[bytes]:
    try:
        return re.compile(pattern.encode("utf-8"), re.MULTILINE)
    except re.error as exc:
        raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from None


class HeaderMatch(Settings):
    """``fail_if_header_(not_)matches`` entry (blackbox_exporter's names)."""

    header: str = Field(min_length=1)
    regexp: str
    allow_missing: bool = False
    _pattern: re.Pattern[bytes] = PrivateAttr()

    @model_validator(mode="after")
    def _compile_pattern(self) -> Self:
        self._pattern = _compile(self.regexp)
        return self

    @property
    def pattern(self) -> re.Pattern[bytes]:
        return self._pattern


class BasicAuth(Settings):
    username: str
    password: SecretRef


class HTTPSettings(Settings):
    method: str = "GET"
    headers: Annotated[tuple[tuple[str, str], ...], BeforeValidator(_header_items)] = ()
    body: str | None = None
    basic_auth: BasicAuth | None = None
    bearer_token: SecretRef | None = None
    valid_status_codes: tuple[int | str, ...] = ()
    valid_http_versions: tuple[Literal["HTTP/1.0", "HTTP/1.1"], ...] = ()
    follow_redirects: bool = True
    max_redirects: int = Field(default=10, ge=0, le=100)
    fail_if_ssl: bool = False
    fail_if_not_ssl: bool = False
    fail_if_body_matches_regexp: tuple[str, ...] = ()
    fail_if_body_not_matches_regexp: tuple[str, ...] = ()
    fail_if_header_matches: tuple[HeaderMatch, ...] = ()
    fail_if_header_not_matches: tuple[HeaderMatch, ...] = ()
    body_size_limit: ByteSize = Field(default=10 * 2**20, ge=0)
    compression: Literal["", "gzip", "deflate", "identity"] = ""
    ip_protocol: Literal["ip4", "ip6"] = "ip6"
    ip_protocol_fallback: bool = True
    tls_config: TLSSettings = Field(default_factory=TLSSettings)
    _ranges: tuple[tuple[int, int], ...] = PrivateAttr(default=((200, 299),))
    _body_must: tuple[re.Pattern[bytes], ...] = PrivateAttr(default=())
    _body_must_not: tuple[re.Pattern[bytes], ...] = PrivateAttr(default=())
    _request_lines: bytes = PrivateAttr(default=b"")
    _host_header: str | None = PrivateAttr(default=None)

    @field_validator("method")
    @classmethod
    def _method(cls, value: str) -> str:
        if not _METHOD.fullmatch(value):
            raise ValueError(f'invalid method "{value}" (upper case, such as GET or POST)')
        return value

    @field_validator("headers")
    @classmethod
    def _header_syntax(cls, value: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
        for name, text in value:
            if not _TOKEN.fullmatch(name):
                raise ValueError(f"invalid header name {name!r}")
            if any(c in text for c in "\r\n\0"):
                raise ValueError(f"header {name}: value must not contain CR, LF or NUL")
        return value

    @field_validator("valid_status_codes")
    @classmethod
    def _codes(cls, value: tuple[int | str, ...]) -> tuple[int | str, ...]:
        _status_ranges(value)
        return value

    @field_validator("fail_if_body_matches_regexp", "fail_if_body_not_matches_regexp")
    @classmethod
    def _regexes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for pattern in value:
            _compile(pattern)
        return value

    @model_validator(mode="after")
    def _prepare(self) -> Self:
        if self.fail_if_ssl and self.fail_if_not_ssl:
            raise ValueError('"fail_if_ssl" and "fail_if_not_ssl" together fail every run')
        self._ranges = _status_ranges(self.valid_status_codes)
        self._body_must = tuple(_compile(p) for p in self.fail_if_body_not_matches_regexp)
        self._body_must_not = tuple(_compile(p) for p in self.fail_if_body_matches_regexp)
        names = {name.lower() for name, _ in self.headers}
        if "authorization" in names and (self.basic_auth or self.bearer_token):
            raise ValueError('an "Authorization" header and basic_auth/bearer_token conflict')
        for framing in ("content-length", "transfer-encoding", "connection"):
            if framing in names:
                raise ValueError(f'the "{framing}" header is set by probed itself')
        defaults = {"User-Agent": f"probed/{probed.__version__}", "Accept": "*/*"}
        if self.compression:
            defaults["Accept-Encoding"] = self.compression
        for name, value in self.headers:
            defaults = {k: v for k, v in defaults.items() if k.lower() != name.lower()}
            if name.lower() == "host":
                self._host_header = value
            else:
                defaults[name] = value
        defaults["Connection"] = "close"
        self._request_lines = "".join(f"{k}: {v}\r\n" for k, v in defaults.items()).encode()
        return self

    @property
    def status_ok(self) -> tuple[tuple[int, int], ...]:
        return self._ranges

    @property
    def request_lines(self) -> bytes:
        """Header lines of every request except ``Host`` and ``Authorization`` (defaults,
        then the module's, then ``Connection: close``), CRLF-terminated."""
        return self._request_lines

    @property
    def host_header(self) -> str | None:
        """A ``Host`` the module sets for the site (sent only to the site's own host)."""
        return self._host_header

    @property
    def body_must_match(self) -> tuple[re.Pattern[bytes], ...]:
        return self._body_must

    @property
    def body_must_not_match(self) -> tuple[re.Pattern[bytes], ...]:
        return self._body_must_not

    @property
    def has_regexes(self) -> bool:
        return bool(
            self._body_must
            or self._body_must_not
            or self.fail_if_header_matches
            or self.fail_if_header_not_matches
        )


# -- targets ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HTTPTarget(Target):
    """``host``/``port`` are where to connect; ``url`` is the site asked for there."""

    url: URL
    pinned: bool = False


def parse_target(raw: str, settings: Any) -> HTTPTarget:
    """``URL`` or ``URL via HOST[:PORT]``; a bare ``host[:port]`` means ``http://host/``."""
    del settings
    text = raw.strip()
    if _USERINFO.search(text):
        # The message must not repeat the password it complains about.
        raise ValueError(
            f'"{_USERINFO.sub("://***@", text)}": credentials in the URL would be exported '
            "as a label; use basic_auth with a secret"
        )
    match = _TARGET.fullmatch(text)
    if match is None:
        raise ValueError(f'"{raw}": expected "URL" or "URL via HOST[:PORT]"')
    url_text = match.group("url")
    if "://" not in url_text:
        url_text = f"http://{url_text}"
    try:
        url = URL(url_text)
    except ValueError as exc:
        raise ValueError(f'"{raw}": invalid URL: {exc}') from None
    if url.scheme not in _DEFAULT_PORTS:
        raise ValueError(f'"{raw}": URL scheme must be http or https, not "{url.scheme}"')
    if not url.raw_host:
        raise ValueError(f'"{raw}": URL has no host')
    host: str = url.raw_host
    try:
        url_port = url.port or _DEFAULT_PORTS[url.scheme]
    except ValueError as exc:
        raise ValueError(f'"{raw}": invalid port: {exc}') from None
    # No fragment (never sent) and an explicit "/" path: one spelling per site URL.
    url = url.with_fragment(None).with_path(url.raw_path or "/", encoded=True, keep_query=True)
    via = match.group("via")
    if via is None:
        return HTTPTarget(raw=text, host=host, port=url_port, url=url)
    try:
        server = parse_host_port(via, url_port)
    except ValueError as exc:
        raise ValueError(f'"{raw}": after "via": {exc}') from None
    return HTTPTarget(raw=text, host=server.host, port=server.port, url=url, pinned=True)


# -- one run ------------------------------------------------------------------------------


@dataclass(slots=True)
class _Response:
    url: URL
    status: int
    version: tuple[int, int]
    headers: Headers
    content_length: int | None
    body: bytes | None
    body_length: int
    tls: bool
    ssl_object: ssl.SSLObject | None


@dataclass(slots=True)
class _Request:
    method: str
    data: bytes | None
    authorization: str | None


def _authorization(settings: HTTPSettings, env: Env) -> str | None:
    if settings.basic_auth is not None:
        password: Secret = env.secrets.resolve(settings.basic_auth.password)
        pair = f"{settings.basic_auth.username}:{password.reveal()}".encode()
        return "Basic " + base64.b64encode(pair).decode("ascii")
    if settings.bearer_token is not None:
        token = env.secrets.resolve(settings.bearer_token)
        if any(c in token.reveal() for c in "\r\n\0"):
            # It would end the header line early and inject what follows into the request.
            raise SecretError(f"bearer token ({token.source}) contains CR, LF or NUL")
        return "Bearer " + token.reveal()
    return None


def _revealed(settings: HTTPSettings, env: Env) -> tuple[str, ...]:
    """The secret values themselves (already read once, so cached), for redaction."""
    if settings.basic_auth is not None:
        return (env.secrets.resolve(settings.basic_auth.password).reveal(),)
    if settings.bearer_token is not None:
        return (env.secrets.resolve(settings.bearer_token).reveal(),)
    return ()


async def probe(target: Target, settings: HTTPSettings, rec: Recorder, env: Env) -> bool:
    site = target if isinstance(target, HTTPTarget) else parse_target(target.raw, settings)
    for name in PHASE_NAMES:  # blackbox exports every phase, 0 where a run never got there
        rec.phases.setdefault(name, 0.0)
    try:
        authorization = _authorization(settings, env)
    except SecretError as exc:
        return rec.fail(Reason.SECRET_UNAVAILABLE, str(exc))
    if authorization is not None:
        credentials = authorization.partition(" ")[2]
        rec.redact(authorization, credentials, *_revealed(settings, env))
    data = settings.body.encode("utf-8") if settings.body is not None else None
    request = _Request(settings.method, data, authorization)
    url = site.url
    redirects = 0
    while True:
        response = await _fetch(
            site, url, request, settings=settings, rec=rec, env=env, first=redirects == 0
        )
        if response is None:
            return False
        location = response.headers.get("Location")
        if not (settings.follow_redirects and response.status in _REDIRECT_STATUSES and location):
            break
        if redirects >= settings.max_redirects:
            rec.set(REDIRECTS, float(redirects))
            return rec.fail(
                Reason.TOO_MANY_REDIRECTS, f"more than {settings.max_redirects} redirects"
            )
        try:
            following = url.join(URL(location)).with_fragment(None)
        except ValueError:
            return rec.fail(Reason.PROTOCOL_ERROR, f"invalid Location {location[:200]!r}")
        if following.scheme not in _DEFAULT_PORTS or not following.raw_host:
            return rec.fail(Reason.PROTOCOL_ERROR, f"redirect to {str(following)[:200]!r}")
        redirects += 1
        rec.debug("redirect", hop=redirects, status=response.status, location=str(following))
        request = _redirected(request, response.status, url, following)
        url = following
    rec.set(REDIRECTS, float(redirects))
    return _evaluate(response, settings, rec)


def _redirected(request: _Request, status: int, old: URL, new: URL) -> _Request:
    method, data = request.method, request.data
    if (status == 303 and method != "HEAD") or (status in (301, 302) and method == "POST"):
        method, data = "GET", None
    # Credentials go to the host they were configured for, never to where it redirects.
    same_host = old.raw_host == new.raw_host
    return _Request(method, data, request.authorization if same_host else None)


def _host_only(authority: str) -> str:
    """``host``, ``host:port``, ``[v6]:port`` -> the host (as SNI wants it)."""
    if authority.startswith("["):
        return authority[1:].partition("]")[0]
    return authority.partition(":")[0] if authority.count(":") == 1 else authority


def _destination(site: HTTPTarget, url: URL) -> tuple[str, int]:
    """Where to connect for ``url``: the pinned server for the site's own host name (its
    port too while scheme and port stay those of the target URL)."""
    port = url.port or _DEFAULT_PORTS[url.scheme]
    if not site.pinned or url.raw_host != site.url.raw_host:
        return url.raw_host or "", port
    assert site.port is not None
    same_origin = url.scheme == site.url.scheme and url.port == site.url.port
    return site.host, site.port if same_origin else port


async def _fetch(
    site: HTTPTarget,
    url: URL,
    request: _Request,
    *,
    settings: HTTPSettings,
    rec: Recorder,
    env: Env,
    first: bool,
) -> _Response | None:
    """One request and (unless it is a redirect we follow) its body; None after recording
    the failure."""
    host, port = _destination(site, url)
    try:
        addresses = await resolve(
            host, port, rec, settings.ip_protocol, settings.ip_protocol_fallback
        )
        stream = await connect(addresses[0], rec, READ_LIMIT, note_family=first)
    except StreamError as exc:
        rec.fail(exc.reason, exc.detail)
        return None
    custom_host = settings.host_header if url.raw_host == site.url.raw_host else None
    with stream:
        tls = url.scheme == "https"
        if tls:
            name = _host_only(custom_host) if custom_host else url.raw_host or ""
            if not await handshake(stream, env, settings.tls_config, name, rec, facts=False):
                return None
        extra = ""
        if request.authorization is not None:
            extra = f"Authorization: {request.authorization}\r\n"
        data = request.data
        length = len(data) if data is not None else None
        if length is None and request.method in _BODY_METHODS:
            length = 0
        head = request_head(
            request.method,
            url.raw_path_qs,
            custom_host or url.host_port_subcomponent or "",
            extra=extra,
            static=settings.request_lines,
            body_length=length,
        )
        try:
            return await _exchange(
                stream, head + (data or b""), url, request, settings=settings, rec=rec
            )
        except StreamError as exc:
            rec.fail(exc.reason, f"{addresses[0][1][0]} port {port}: {exc.detail}")
            return None


async def _exchange(
    stream: Stream,
    message: bytes,
    url: URL,
    request: _Request,
    *,
    settings: HTTPSettings,
    rec: Recorder,
) -> _Response:
    """Send the request, read the head (phase ``processing``) and the body (``transfer``);
    a HEAD response and a redirect we follow are not read past their head."""
    keep = bool(settings.body_must_match or settings.body_must_not_match)
    response = Response(
        keep=keep,
        limit=settings.body_size_limit,
        decode=settings.compression not in ("", "identity"),
    )
    with rec.phase("processing"):
        stream.write(message)
        while not response.head_done:
            await _read_into(stream, response)
    with rec.phase("transfer"):
        skip = request.method == "HEAD" or (
            settings.follow_redirects and response.status in _REDIRECT_STATUSES
        )
        while not (skip or response.done):
            await _read_into(stream, response)
    if rec.log is not None:  # str(URL) is not free; only for a run that keeps its log
        rec.debug("response", url=str(url), status=response.status, length=response.length)
    return _Response(
        url=url,
        status=response.status,
        version=response.version,
        headers=response.headers,
        content_length=response.content_length,
        body=response.body if keep else None,
        body_length=response.length,
        tls=stream.tls is not None,
        ssl_object=stream.tls,
    )


async def _read_into(stream: Stream, response: Response) -> None:
    data = await stream.read_some(READ_LIMIT)
    if data:
        response.feed(data)
    else:
        response.finish()


def _evaluate(response: _Response, settings: HTTPSettings, rec: Recorder) -> bool:
    """Record the final response's facts, then apply the module's checks in order."""
    _record_response(response, rec)
    failure = _check(response, settings)
    if failure is None and settings.has_regexes:
        problem = _regex_problem(response, settings)
        rec.set(FAILED_DUE_TO_REGEX, 1.0 if problem else 0.0)
        if problem:
            failure = (Reason.HTTP_REGEX, problem)
    if failure is not None:
        return rec.fail(*failure)
    return True


def _record_response(response: _Response, rec: Recorder) -> None:
    rec.set(STATUS_CODE, float(response.status))
    length = response.content_length
    rec.set(CONTENT_LENGTH, float(length if length is not None else -1))
    rec.set(BODY_LENGTH, float(response.body_length))
    rec.set(VERSION, response.version[0] + response.version[1] / 10)
    rec.set(SSL_USED, 1.0 if response.tls else 0.0)
    if response.ssl_object is not None:
        verified = response.ssl_object.context.verify_mode != ssl.CERT_NONE
        record_facts(rec, response.ssl_object, verified=verified)
    modified = response.headers.get("Last-Modified")
    if modified:
        try:
            stamp = email.utils.parsedate_to_datetime(modified).timestamp()
        except (TypeError, ValueError):
            rec.debug("unparsable Last-Modified", value=modified[:100])
        else:
            rec.set(LAST_MODIFIED, stamp)


def _check(response: _Response, settings: HTTPSettings) -> tuple[Reason, str] | None:
    if not any(low <= response.status <= high for low, high in settings.status_ok):
        return Reason.HTTP_STATUS, f"status {response.status} from {response.url}"
    version = f"HTTP/{response.version[0]}.{response.version[1]}"
    if settings.valid_http_versions and version not in settings.valid_http_versions:
        return Reason.HTTP_VERSION, f"{version} not in valid_http_versions"
    if settings.fail_if_ssl and response.tls:
        return Reason.HTTP_SSL_FORBIDDEN, "final response came over TLS (fail_if_ssl)"
    if settings.fail_if_not_ssl and not response.tls:
        return Reason.HTTP_SSL_REQUIRED, "final response came without TLS (fail_if_not_ssl)"
    return None


def _regex_problem(response: _Response, settings: HTTPSettings) -> str:
    headers = response.headers
    for rule in settings.fail_if_header_matches:
        values = headers.getall(rule.header)
        if any(rule.pattern.search(v) for v in values):
            return f"header {rule.header} matches /{rule.regexp}/"
    for rule in settings.fail_if_header_not_matches:
        values = headers.getall(rule.header)
        if not values:
            if rule.allow_missing:
                continue
            return f"header {rule.header} missing"
        if not any(rule.pattern.search(v) for v in values):
            return f"header {rule.header} does not match /{rule.regexp}/"
    body = response.body or b""
    for pattern in settings.body_must_not_match:
        if pattern.search(body):
            return f"body matches /{pattern.pattern.decode('utf-8', 'replace')}/"
    for pattern in settings.body_must_match:
        if not pattern.search(body):
            return f"body does not match /{pattern.pattern.decode('utf-8', 'replace')}/"
    return ""


SPEC = ProbeSpec(
    name="http",
    probe=probe,
    settings=HTTPSettings,
    phase_family=PHASES,
    families=(
        STATUS_CODE,
        CONTENT_LENGTH,
        BODY_LENGTH,
        REDIRECTS,
        SSL_USED,
        VERSION,
        LAST_MODIFIED,
        FAILED_DUE_TO_REGEX,
        *TLS_FAMILIES,
    ),
    default_port=80,
    parse_target=parse_target,
)
