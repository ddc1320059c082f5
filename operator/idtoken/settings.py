"""Configuration: parsed once from TOML and three environment variables into frozen objects.

Every error is a :class:`~idtoken.errors.ConfigError` whose message starts with the dotted
key that is wrong (``services[1].session_ttl: must be an integer between 10 and 3600``), so an
operator can fix the file without reading code. Unknown keys are errors too: a misspelt limit
silently falling back to its default is how outages start.

Relative paths (``keys_dir``, key files) are resolved against the directory of the
configuration file.
"""

from __future__ import annotations

import hashlib
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal
from urllib.parse import urlsplit

from websockets.http11 import MAX_LINE_LENGTH as WS_MAX_LINE_LENGTH
from websockets.http11 import MAX_NUM_HEADERS as WS_MAX_NUM_HEADERS

from idtoken.errors import ConfigError
from idtoken.ids import ID_PATTERN
from idtoken.scopes import KNOWN_SCOPES
from idtoken.store.connect import RedisUrlError, TlsFiles, parse_redis_url
from idtoken.urls import (
    PUBLIC_ONLY,
    AddressPolicy,
    is_loopback_host,
    notification_endpoint_problem,
    redirect_uri_problem,
)

ENV_CONFIG = "IDTOKEN_CONFIG"
ENV_REDIS_URL = "IDTOKEN_REDIS_URL"
ENV_ISSUER = "IDTOKEN_ISSUER"

_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_HOST = re.compile(r"\A[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*\Z")

OtpMode = Literal["display", "typed"]
IssuerFormat = Literal["jwt", "uqudo"]
AuthMethod = Literal["client_secret_basic", "client_secret_post", "none"]
SubjectType = Literal["public", "pairwise"]
DeliveryMode = Literal["poll", "ping"]
AUTH_METHODS: tuple[AuthMethod, ...] = ("client_secret_basic", "client_secret_post", "none")


@dataclass(frozen=True)
class ServiceSettings:
    """A relying party registered with the operator."""

    id: str
    name: str
    audience: str
    allowed_scopes: tuple[str, ...]
    default_scopes: tuple[str, ...]
    client_secret_sha256: bytes | None = None
    allowed_origins: tuple[str, ...] | None = None
    otp_mode: OtpMode = "display"
    session_ttl: int = 60
    token_ttl: int = 3600
    hide_unknown_tokens: bool = False
    # OpenID Connect and CIBA client registration (the client id is the service id).
    redirect_uris: tuple[str, ...] = ()
    token_endpoint_auth_method: AuthMethod = "none"  # noqa: S105 - a method's name
    subject_type: SubjectType = "public"
    sector_identifier: str | None = None
    backchannel_token_delivery_mode: DeliveryMode | None = None
    backchannel_client_notification_endpoint: str | None = None

    @property
    def is_public(self) -> bool:
        return self.client_secret_sha256 is None

    @property
    def sector(self) -> str:
        """Where pairwise subjects are computed for (OpenID Connect Core §8.1): the
        configured sector identifier, else the one host of the redirect URIs, else the host
        of the CIBA notification endpoint, else the client id."""
        if self.sector_identifier is not None:
            return self.sector_identifier
        for uri in (*self.redirect_uris, self.backchannel_client_notification_endpoint):
            if uri is not None:
                return urlsplit(uri).hostname or self.id
        return self.id


@dataclass(frozen=True)
class LimitSettings:
    max_pending_per_token: int = 3
    pushes_per_token_per_10min: int = 5
    max_failed_verifications: int = 100
    not_me_pause: int = 900
    enroll_per_ip_per_hour: int = 5
    timestamp_skew: int = 30


@dataclass(frozen=True)
class PushSettings:
    vapid_private_key_file: Path
    vapid_subject: str
    # Non-public addresses a push endpoint may reach (allow_private_networks); none by default.
    endpoint_policy: AddressPolicy = PUBLIC_ONLY


@dataclass(frozen=True)
class MetricsSettings:
    token: str | None = None


@dataclass(frozen=True)
class IssuerSettings:
    """A party whose signed statements can enroll a device (integration server or KYC provider)."""

    issuer: str
    audience: str
    format: IssuerFormat = "jwt"
    public_key_file: Path | None = None
    certificate_file: Path | None = None
    public_key_b64: str | None = None
    jwks_uri: str | None = None
    trust_level: int = 1
    kid: str | None = None


@dataclass(frozen=True)
class EnrollmentSettings:
    leeway: int = 60
    max_token_lifetime: int = 600
    credential_max_age: int = 365 * 86400
    jwks_cooldown: int = 30
    jwks_timeout: float = 2.0


@dataclass(frozen=True)
class ServerSettings:
    """Bounds on a request's head, enforced while it is parsed (:mod:`idtoken.httplimits`).
    A line is counted without its CRLF, a header as ``name: value``."""

    max_request_line: int = 8190
    max_header_line: int = 8190
    max_header_bytes: int = 16384
    max_headers: int = 100


@dataclass(frozen=True)
class DemoSettings:
    enabled: bool = False
    issuer_private_key_file: Path | None = None


@dataclass(frozen=True)
class OidcSettings:
    """OpenID Connect and CIBA: the operator secret and the lifetimes of what they hand out."""

    secret_key_file: Path
    code_ttl: int = 60
    request_ttl: int = 600
    ciba_interval: int = 5
    ciba_max_interval: int = 60
    ping_retry_seconds: int = 120
    ping_timeout: float = 5.0


@dataclass(frozen=True)
class Settings:
    issuer: str
    keys_dir: Path
    push: PushSettings
    services: Mapping[str, ServiceSettings]
    redis_url: str | None = None
    redis_tls_ca_file: Path | None = None
    redis_tls_cert_file: Path | None = None
    redis_tls_key_file: Path | None = None
    limits: LimitSettings = field(default_factory=LimitSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    enrollment_issuers: tuple[IssuerSettings, ...] = ()
    enrollment: EnrollmentSettings = field(default_factory=EnrollmentSettings)
    demo: DemoSettings = field(default_factory=DemoSettings)
    server: ServerSettings = field(default_factory=ServerSettings)
    oidc: OidcSettings = field(default_factory=lambda: OidcSettings(Path("var/secret.key")))
    source: Path | None = None

    @property
    def redis_tls(self) -> TlsFiles:
        """The ``redis_tls_*`` files (all ``None`` when not configured)."""
        return TlsFiles(self.redis_tls_ca_file, self.redis_tls_cert_file, self.redis_tls_key_file)

    def issuer_named(self, iss: str) -> IssuerSettings | None:
        for candidate in self.enrollment_issuers:
            if candidate.issuer == iss:
                return candidate
        return None


# --------------------------------------------------------------------------- loading


def config_path(cli_value: str | None, environ: Mapping[str, str] | None = None) -> Path:
    """The configuration file: ``--config`` if given, else ``IDTOKEN_CONFIG``."""
    env = os.environ if environ is None else environ
    value = cli_value or env.get(ENV_CONFIG) or ""
    if not value:
        raise ConfigError("--config", f"no configuration file given (use --config or {ENV_CONFIG})")
    return Path(value)


def load_settings(path: Path, environ: Mapping[str, str] | None = None) -> Settings:
    """Read ``path`` and apply ``IDTOKEN_REDIS_URL`` / ``IDTOKEN_ISSUER`` on top."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError("--config", f"file not found: {path}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("--config", f"cannot read {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("--config", f"not valid TOML: {exc}") from exc
    return parse_settings(raw, base_dir=path.resolve().parent, source=path, environ=environ)


def parse_settings(
    raw: Mapping[str, Any],
    *,
    base_dir: Path,
    source: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    env = os.environ if environ is None else environ
    t = _Table(raw, "", base_dir)
    t.allow(
        "issuer",
        "redis_url",
        "redis_tls_ca_file",
        "redis_tls_cert_file",
        "redis_tls_key_file",
        "keys_dir",
        "push",
        "services",
        "limits",
        "metrics",
        "enrollment_issuers",
        "enrollment",
        "demo",
        "server",
        "oidc",
    )
    issuer = env.get(ENV_ISSUER) or t.get_str("issuer", required=True)
    _check_issuer_url("issuer", issuer)
    redis_url = env.get(ENV_REDIS_URL) or t.opt_str("redis_url")
    tls_files = {
        name: t.opt_path(name)
        for name in ("redis_tls_ca_file", "redis_tls_cert_file", "redis_tls_key_file")
    }
    _check_redis(redis_url, tls_files)
    keys_dir = t.path("keys_dir", default="var/keys")

    push_t = t.table("push")
    push_t.allow("vapid_private_key_file", "vapid_subject", "allow_private_networks")
    try:
        endpoint_policy = AddressPolicy.parse(push_t.str_list("allow_private_networks"))
    except ValueError as exc:
        raise ConfigError(push_t.key("allow_private_networks"), str(exc)) from None
    push = PushSettings(
        vapid_private_key_file=push_t.path("vapid_private_key_file", default="var/vapid.pem"),
        vapid_subject=push_t.get_str("vapid_subject", default="mailto:ops@example.com"),
        endpoint_policy=endpoint_policy,
    )
    if not push.vapid_subject.startswith(("mailto:", "https://")):
        raise ConfigError("push.vapid_subject", "must start with mailto: or https://")

    services: dict[str, ServiceSettings] = {}
    for i, st in enumerate(t.tables("services")):
        svc = _parse_service(st, push.endpoint_policy)
        if svc.id in services:
            raise ConfigError(f"services[{i}].id", f"duplicate service id {svc.id!r}")
        services[svc.id] = svc

    lt = t.table("limits")
    d = LimitSettings()
    lt.allow(*d.__dataclass_fields__)
    limits = LimitSettings(
        max_pending_per_token=lt.get_int("max_pending_per_token", d.max_pending_per_token, 1, 100),
        pushes_per_token_per_10min=lt.get_int(
            "pushes_per_token_per_10min", d.pushes_per_token_per_10min, 1, 1000
        ),
        max_failed_verifications=lt.get_int(
            "max_failed_verifications", d.max_failed_verifications, 1, 100_000
        ),
        not_me_pause=lt.get_int("not_me_pause", d.not_me_pause, 0, 7 * 86400),
        enroll_per_ip_per_hour=lt.get_int(
            "enroll_per_ip_per_hour", d.enroll_per_ip_per_hour, 1, 100_000
        ),
        timestamp_skew=lt.get_int("timestamp_skew", d.timestamp_skew, 1, 600),
    )

    mt = t.table("metrics")
    mt.allow("token")
    metrics_token = mt.opt_str("token")
    if metrics_token is not None and len(metrics_token) < 16:
        raise ConfigError("metrics.token", "must be at least 16 characters")
    metrics = MetricsSettings(token=metrics_token)

    issuers: list[IssuerSettings] = []
    for i, it in enumerate(t.tables("enrollment_issuers")):
        iss = _parse_issuer(it)
        if any(other.issuer == iss.issuer for other in issuers):
            raise ConfigError(f"enrollment_issuers[{i}].issuer", f"duplicate issuer {iss.issuer!r}")
        issuers.append(iss)

    et = t.table("enrollment")
    ed = EnrollmentSettings()
    et.allow(*ed.__dataclass_fields__)
    enrollment = EnrollmentSettings(
        leeway=et.get_int("leeway", ed.leeway, 0, 600),
        max_token_lifetime=et.get_int("max_token_lifetime", ed.max_token_lifetime, 10, 86400),
        credential_max_age=et.get_int(
            "credential_max_age", ed.credential_max_age, 60, 10 * 365 * 86400
        ),
        jwks_cooldown=et.get_int("jwks_cooldown", ed.jwks_cooldown, 1, 3600),
        jwks_timeout=et.get_float("jwks_timeout", ed.jwks_timeout, 0.1, 30.0),
    )

    dt = t.table("demo")
    dt.allow("enabled", "issuer_private_key_file")
    demo = DemoSettings(
        enabled=dt.get_bool("enabled", False),
        issuer_private_key_file=dt.opt_path("issuer_private_key_file"),
    )

    svt = t.table("server")
    sv = ServerSettings()
    svt.allow(*sv.__dataclass_fields__)
    # A WebSocket handshake is parsed once more by websockets, whose own limits cap these.
    longest_line = WS_MAX_LINE_LENGTH - 2  # websockets counts the CRLF
    server = ServerSettings(
        max_request_line=svt.get_int("max_request_line", sv.max_request_line, 1024, longest_line),
        max_header_line=svt.get_int("max_header_line", sv.max_header_line, 1024, longest_line),
        max_header_bytes=svt.get_int("max_header_bytes", sv.max_header_bytes, 4096, 1 << 20),
        max_headers=svt.get_int("max_headers", sv.max_headers, 32, WS_MAX_NUM_HEADERS),
    )

    return Settings(
        issuer=issuer.rstrip("/"),
        redis_url=redis_url,
        redis_tls_ca_file=tls_files["redis_tls_ca_file"],
        redis_tls_cert_file=tls_files["redis_tls_cert_file"],
        redis_tls_key_file=tls_files["redis_tls_key_file"],
        keys_dir=keys_dir,
        push=push,
        services=MappingProxyType(services),
        limits=limits,
        metrics=metrics,
        enrollment_issuers=tuple(issuers),
        enrollment=enrollment,
        demo=demo,
        server=server,
        oidc=_parse_oidc(t.table("oidc")),
        source=source,
    )


def _parse_oidc(t: _Table) -> OidcSettings:
    d = OidcSettings(Path("var/secret.key"))
    t.allow(*d.__dataclass_fields__)
    oidc = OidcSettings(
        secret_key_file=t.path("secret_key_file", default="var/secret.key"),
        code_ttl=t.get_int("code_ttl", d.code_ttl, 10, 60),
        request_ttl=t.get_int("request_ttl", d.request_ttl, 60, 3600),
        ciba_interval=t.get_int("ciba_interval", d.ciba_interval, 1, 60),
        ciba_max_interval=t.get_int("ciba_max_interval", d.ciba_max_interval, 5, 600),
        ping_retry_seconds=t.get_int("ping_retry_seconds", d.ping_retry_seconds, 10, 3600),
        ping_timeout=t.get_float("ping_timeout", d.ping_timeout, 0.5, 30.0),
    )
    if oidc.ciba_max_interval < oidc.ciba_interval:
        raise ConfigError(t.key("ciba_max_interval"), "must not be below ciba_interval")
    return oidc


def _parse_service(t: _Table, push_policy: AddressPolicy) -> ServiceSettings:
    t.allow(
        "id",
        "name",
        "audience",
        "allowed_scopes",
        "default_scopes",
        "client_secret_sha256",
        "allowed_origins",
        "otp_mode",
        "session_ttl",
        "token_ttl",
        "hide_unknown_tokens",
        "redirect_uris",
        "token_endpoint_auth_method",
        "subject_type",
        "sector_identifier",
        "backchannel_token_delivery_mode",
        "backchannel_client_notification_endpoint",
    )
    sid = t.get_str("id", required=True)
    if not ID_PATTERN.match(sid):
        raise ConfigError(t.key("id"), "must match ^[A-Za-z0-9._:@-]{1,128}$")
    allowed = t.scopes("allowed_scopes", required=True)
    if not allowed:
        raise ConfigError(t.key("allowed_scopes"), "must list at least one scope")
    default = t.scopes("default_scopes", required=False)
    for scope in default:
        if scope not in allowed:
            raise ConfigError(t.key("default_scopes"), f"{scope!r} is not in allowed_scopes")
    secret_hex = t.opt_str("client_secret_sha256")
    secret: bytes | None = None
    if secret_hex is not None:
        if not _SHA256_HEX.match(secret_hex):
            raise ConfigError(
                t.key("client_secret_sha256"), "must be 64 lowercase hex characters (SHA-256)"
            )
        secret = bytes.fromhex(secret_hex)
    origins: tuple[str, ...] | None = None
    if "allowed_origins" in t.raw:
        origins = tuple(t.str_list("allowed_origins"))
        for origin in origins:
            parts = urlsplit(origin)
            if parts.scheme not in ("http", "https") or not parts.netloc or parts.path:
                raise ConfigError(
                    t.key("allowed_origins"),
                    f"{origin!r} is not an origin (scheme://host[:port], no path)",
                )
    mode = t.get_str("otp_mode", default="display")
    if mode not in ("display", "typed"):
        raise ConfigError(t.key("otp_mode"), 'must be "display" or "typed"')
    return ServiceSettings(
        id=sid,
        name=t.get_str("name", default=sid),
        audience=t.get_str("audience", default=sid),
        allowed_scopes=allowed,
        default_scopes=default,
        client_secret_sha256=secret,
        allowed_origins=origins,
        otp_mode="typed" if mode == "typed" else "display",
        session_ttl=t.get_int("session_ttl", 60, 10, 3600),
        token_ttl=t.get_int("token_ttl", 3600, 60, 86400),
        hide_unknown_tokens=t.get_bool("hide_unknown_tokens", False),
        **_parse_client(t, secret is not None, push_policy),
    )


def _parse_client(t: _Table, has_secret: bool, push_policy: AddressPolicy) -> dict[str, Any]:
    """The OpenID Connect / CIBA registration keys of a service."""
    redirect_uris = tuple(t.str_list("redirect_uris"))
    for uri in redirect_uris:
        problem = redirect_uri_problem(uri)
        if problem is not None:
            raise ConfigError(t.key("redirect_uris"), f"{uri!r}: {problem}")
    if len(set(redirect_uris)) != len(redirect_uris):
        raise ConfigError(t.key("redirect_uris"), "lists a URI twice")
    default_method = "client_secret_basic" if has_secret else "none"
    method = t.get_str("token_endpoint_auth_method", default=default_method)
    if method not in AUTH_METHODS:
        raise ConfigError(t.key("token_endpoint_auth_method"), f"must be one of {AUTH_METHODS}")
    if (method == "none") == has_secret:
        raise ConfigError(
            t.key("token_endpoint_auth_method"),
            '"none" is for public clients (no client_secret_sha256); the others need a secret',
        )
    subject_type = t.get_str("subject_type", default="public")
    if subject_type not in ("public", "pairwise"):
        raise ConfigError(t.key("subject_type"), 'must be "public" or "pairwise"')
    sector = t.opt_str("sector_identifier")
    if sector is not None and not _HOST.match(sector):
        raise ConfigError(t.key("sector_identifier"), "must be a host name (auth.example.com)")
    hosts = {urlsplit(uri).hostname for uri in redirect_uris}
    if subject_type == "pairwise" and sector is None and len(hosts) > 1:
        raise ConfigError(
            t.key("sector_identifier"),
            "is needed for pairwise subjects when redirect_uris are on several hosts",
        )
    mode = t.opt_str("backchannel_token_delivery_mode")
    if mode is not None and mode not in ("poll", "ping"):
        raise ConfigError(t.key("backchannel_token_delivery_mode"), 'must be "poll" or "ping"')
    if mode is not None and method == "none":
        raise ConfigError(
            t.key("backchannel_token_delivery_mode"),
            "CIBA is for confidential clients: set client_secret_sha256",
        )
    endpoint = t.opt_str("backchannel_client_notification_endpoint")
    key = t.key("backchannel_client_notification_endpoint")
    if (mode == "ping") != (endpoint is not None):
        raise ConfigError(
            key, 'is required with backchannel_token_delivery_mode = "ping", only then'
        )
    if endpoint is not None:
        problem = notification_endpoint_problem(endpoint, push_policy)
        if problem is not None:
            raise ConfigError(key, problem)
    return {
        "redirect_uris": redirect_uris,
        "token_endpoint_auth_method": method,
        "subject_type": subject_type,
        "sector_identifier": sector,
        "backchannel_token_delivery_mode": mode,
        "backchannel_client_notification_endpoint": endpoint,
    }


def _parse_issuer(t: _Table) -> IssuerSettings:
    t.allow(
        "issuer",
        "audience",
        "format",
        "public_key_file",
        "certificate_file",
        "public_key_b64",
        "jwks_uri",
        "trust_level",
        "kid",
    )
    fmt = t.get_str("format", default="jwt")
    if fmt not in ("jwt", "uqudo"):
        raise ConfigError(t.key("format"), 'must be "jwt" or "uqudo"')
    if fmt == "uqudo" and t.opt_str("kid") is not None:
        raise ConfigError(t.key("kid"), 'not for format = "uqudo": its kids come from jwks_uri')
    issuer = IssuerSettings(
        issuer=t.get_str("issuer", required=True),
        audience=t.get_str("audience", required=True),
        format="uqudo" if fmt == "uqudo" else "jwt",
        public_key_file=t.opt_path("public_key_file"),
        certificate_file=t.opt_path("certificate_file"),
        public_key_b64=t.opt_str("public_key_b64"),
        jwks_uri=t.opt_str("jwks_uri"),
        trust_level=t.get_int("trust_level", 1 if fmt == "jwt" else 2, 1, 3),
        kid=t.opt_str("kid"),
    )
    sources = [
        name
        for name in ("public_key_file", "certificate_file", "public_key_b64", "jwks_uri")
        if getattr(issuer, name) is not None
    ]
    if len(sources) != 1:
        raise ConfigError(
            t.key("public_key_file"),
            "exactly one of public_key_file, certificate_file, public_key_b64, jwks_uri is needed",
        )
    if issuer.jwks_uri is not None:
        _check_fetch_url(t.key("jwks_uri"), issuer.jwks_uri)
    return issuer


def _check_issuer_url(key: str, value: str) -> None:
    # http:// is accepted so that a development operator on a laptop works; the JWT's `iss`
    # is an identifier, not something the operator fetches.
    parts = urlsplit(value)
    if parts.scheme not in ("https", "http") or not parts.hostname or parts.query:
        raise ConfigError(key, "must be an absolute http(s) URL without a query")


def _check_redis_url(key: str, value: str) -> None:
    """Accept exactly the URL forms :mod:`idtoken.store.connect` can open."""
    try:
        target = parse_redis_url(value)
    except RedisUrlError as exc:
        raise ConfigError(key, str(exc)) from None  # the message never repeats the URL
    for option in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
        path = target.options.get(option)
        if path is not None and not Path(path).is_file():
            raise ConfigError(key, f"{option}: file not found: {path}")


def _check_redis(url: str | None, tls_files: Mapping[str, Path | None]) -> None:
    if url is not None:
        _check_redis_url("redis_url", url)
    given = {name: path for name, path in tls_files.items() if path is not None}
    if not given:
        return
    name = next(iter(given))
    if url is None:
        raise ConfigError(name, "needs redis_url")
    target = parse_redis_url(url)
    if not target.tls:
        raise ConfigError(name, "needs a TLS redis_url (rediss://, rediss+sentinel://, ...)")
    for name, path in given.items():
        if not path.is_file():
            raise ConfigError(name, f"file not found: {path}")
    if "redis_tls_ca_file" in given and "ssl_ca_certs" in target.options:
        raise ConfigError("redis_tls_ca_file", "the CA is also given as ssl_ca_certs in redis_url")
    if ("redis_tls_cert_file" in given) != ("redis_tls_key_file" in given):
        raise ConfigError(
            "redis_tls_cert_file", "redis_tls_cert_file and redis_tls_key_file go together"
        )
    if "redis_tls_cert_file" in given and "ssl_certfile" in target.options:
        raise ConfigError(
            "redis_tls_cert_file", "the client certificate is also given in redis_url"
        )


def _check_fetch_url(key: str, value: str) -> None:
    parts = urlsplit(value)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and parts.hostname and is_loopback_host(parts.hostname):
        return
    raise ConfigError(key, "must be an https:// URL (http:// only for loopback hosts)")


def secret_digest(secret: str) -> str:
    """The value to put in ``client_secret_sha256`` for a given client secret."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


class _Table:
    """A TOML table with typed accessors whose errors carry the dotted key."""

    def __init__(self, raw: object, prefix: str, base_dir: Path) -> None:
        if not isinstance(raw, Mapping):
            raise ConfigError(prefix or "<root>", "must be a table")
        self.raw: Mapping[str, Any] = raw
        self.prefix = prefix
        self.base_dir = base_dir

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def allow(self, *names: str) -> None:
        for name in self.raw:
            if name not in names:
                raise ConfigError(self.key(name), "unknown key")

    def table(self, name: str) -> _Table:
        return _Table(self.raw.get(name, {}), self.key(name), self.base_dir)

    def tables(self, name: str) -> list[_Table]:
        value = self.raw.get(name, [])
        if not isinstance(value, list):
            raise ConfigError(self.key(name), "must be an array of tables ([[...]])")
        return [_Table(v, f"{self.key(name)}[{i}]", self.base_dir) for i, v in enumerate(value)]

    def get_str(self, name: str, *, default: str | None = None, required: bool = False) -> str:
        value = self.raw.get(name)
        if value is None:
            if required or default is None:
                raise ConfigError(self.key(name), "is required")
            return default
        if not isinstance(value, str) or not value:
            raise ConfigError(self.key(name), "must be a non-empty string")
        return value

    def opt_str(self, name: str) -> str | None:
        if name not in self.raw:
            return None
        return self.get_str(name, required=True)

    def str_list(self, name: str) -> list[str]:
        value = self.raw.get(name, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(self.key(name), "must be a list of non-empty strings")
        return list(value)

    def scopes(self, name: str, *, required: bool) -> tuple[str, ...]:
        if required and name not in self.raw:
            raise ConfigError(self.key(name), "is required")
        values = self.str_list(name)
        for scope in values:
            if scope not in KNOWN_SCOPES:
                raise ConfigError(self.key(name), f"unknown scope {scope!r}")
        return tuple(dict.fromkeys(values))

    def get_int(self, name: str, default: int, low: int, high: int) -> int:
        value = self.raw.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ConfigError(self.key(name), f"must be an integer between {low} and {high}")
        return value

    def get_float(self, name: str, default: float, low: float, high: float) -> float:
        value = self.raw.get(name, default)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not low <= value <= high
        ):
            raise ConfigError(self.key(name), f"must be a number between {low} and {high}")
        return float(value)

    def get_bool(self, name: str, default: bool) -> bool:
        value = self.raw.get(name, default)
        if not isinstance(value, bool):
            raise ConfigError(self.key(name), "must be true or false")
        return value

    def path(self, name: str, *, default: str) -> Path:
        return self._resolve(self.get_str(name, default=default))

    def opt_path(self, name: str) -> Path | None:
        value = self.opt_str(name)
        return None if value is None else self._resolve(value)

    def _resolve(self, value: str) -> Path:
        p = Path(value)
        return p if p.is_absolute() else (self.base_dir / p)
