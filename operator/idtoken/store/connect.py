"""Redis connections from one URL: standalone, TLS, ACL users, Sentinel and Cluster.

Accepted forms (``[user:password@]`` is optional everywhere; user and password are
percent-decoded; a password without a user authenticates as ``default``)::

    redis://[user:pw@]host[:6379][/db]                  one server (or a managed endpoint)
    rediss://[user:pw@]host[:6379][/db][?ssl_ca_certs=/path/ca.pem]     the same over TLS
    unix://[user:pw@]/path/to/redis.sock[?db=N]         a local socket
    redis+sentinel://[user:pw@]h1[:26379],h2,h3/<service>[/db]          Sentinel
    rediss+sentinel://...                               Sentinel, TLS to sentinels and servers
    redis+cluster://[user:pw@]h1[:6379][,h2...]         Redis Cluster (seed nodes, db 0 only)
    rediss+cluster://...                                Redis Cluster over TLS

Query options: on TLS schemes ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile`` (paths),
``ssl_cert_reqs`` (``required`` | ``optional`` | ``none``), ``ssl_check_hostname``
(``true`` | ``false``); on Sentinel schemes ``sentinel_username`` and ``sentinel_password``
(the sentinels' own credentials; the userinfo is for the data servers); on ``unix://``
``db``. Anything else is refused, so a misspelt option never silently does nothing.

:func:`parse_redis_url` only validates (settings use it); :func:`open_connections` builds the
clients the store needs: one pooled, retrying client for commands and, for the event stream,
either one dedicated never-retrying client (standalone, Sentinel) or a factory of per-node
clients (Cluster, where sharded pub/sub is served by the node that owns a channel's slot).
Standalone and ``unix://`` targets also get the *lane*: one lean pipelined connection
(:mod:`idtoken.store.resp`) that carries the login path's scripts and reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote, urlsplit

from idtoken.store.resp import Link, RespClient

Mode = Literal["standalone", "unix", "sentinel", "cluster"]

SCHEMES: Mapping[str, tuple[Mode, bool]] = {
    "redis": ("standalone", False),
    "rediss": ("standalone", True),
    "unix": ("unix", False),
    "redis+sentinel": ("sentinel", False),
    "rediss+sentinel": ("sentinel", True),
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
}

_TLS_OPTIONS = {
    "ssl_ca_certs",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_cert_reqs",
    "ssl_check_hostname",
}
_SENTINEL_OPTIONS = {"sentinel_username", "sentinel_password"}
_CERT_REQS = {"required", "optional", "none"}
_BOOLEANS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}

# Timeouts shared by every mode. Commands fail fast (the API answers 503 and the caller
# retries); the event stream never retries inside redis-py (see RedisStore).
CONNECT_TIMEOUT = 1.0
COMMAND_TIMEOUT = 2.0
HEALTH_CHECK_INTERVAL = 15
SENTINEL_TIMEOUT = 0.5


class RedisUrlError(ValueError):
    """The URL is not one of the supported forms. The message never contains a secret."""


@dataclass(frozen=True)
class TlsFiles:
    """TLS material from the configuration (``redis_tls_*`` keys), merged with URL options."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    def __bool__(self) -> bool:
        return any((self.ca_file, self.cert_file, self.key_file))


@dataclass(frozen=True)
class RedisTarget:
    """A parsed ``redis_url``."""

    mode: Mode
    tls: bool
    hosts: tuple[tuple[str, int], ...] = ()
    socket_path: str | None = None
    db: int = 0
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    service_name: str | None = None
    options: Mapping[str, str] = field(default_factory=dict, repr=False)

    @property
    def scheme(self) -> str:
        return next(s for s, (m, t) in SCHEMES.items() if m == self.mode and t == self.tls)

    def describe(self) -> str:
        """The target without credentials, for logs."""
        where = self.socket_path or ",".join(f"{h}:{p}" for h, p in self.hosts)
        service = f"/{self.service_name}" if self.service_name else ""
        user = f"{self.username}@" if self.username else ""
        return f"{self.scheme}://{user}{where}{service}/{self.db}"


def parse_redis_url(url: str) -> RedisTarget:
    """Validate ``url`` and split it into its parts; :class:`RedisUrlError` if unsupported."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise RedisUrlError("is not a valid URL") from exc
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise RedisUrlError(
            "must be a redis://, rediss://, unix://, redis+sentinel://, rediss+sentinel://, "
            "redis+cluster:// or rediss+cluster:// URL"
        )
    mode, tls = SCHEMES[scheme]
    if parts.fragment:
        raise RedisUrlError("must not have a #fragment")
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    username, password = _credentials(userinfo)
    options = _options(parts.query, mode, tls)

    if mode == "unix":
        if hostlist:
            raise RedisUrlError("unix:// takes a socket path (unix:///path/to/redis.sock)")
        if not parts.path.startswith("/") or parts.path == "/":
            raise RedisUrlError("unix:// needs an absolute socket path")
        db = _db(options.pop("db", "0"))
        return RedisTarget(mode, tls, (), parts.path, db, username, password, None, options)

    default_port = 26379 if mode == "sentinel" else 6379
    hosts = _hosts(hostlist, default_port, several=mode != "standalone")
    segments = [unquote(s) for s in parts.path.split("/")[1:]] if parts.path else []
    if segments and segments[-1] == "":
        segments.pop()  # a trailing slash
    service: str | None = None
    if mode == "sentinel":
        if not segments or not segments[0]:
            raise RedisUrlError(
                "redis+sentinel:// needs the service name: redis+sentinel://h1,h2,h3/<service>[/db]"
            )
        service = segments.pop(0)
    if len(segments) > 1:
        raise RedisUrlError("has too many path segments")
    db = _db(segments[0]) if segments else 0
    if mode == "cluster" and db != 0:
        raise RedisUrlError("Redis Cluster has only database 0")
    return RedisTarget(mode, tls, hosts, None, db, username, password, service, options)


def _credentials(userinfo: str) -> tuple[str | None, str | None]:
    if not userinfo:
        return None, None
    user, colon, password = userinfo.partition(":")
    return (unquote(user) or None), (unquote(password) if colon else None)


def _hosts(hostlist: str, default_port: int, *, several: bool) -> tuple[tuple[str, int], ...]:
    if not hostlist:
        raise RedisUrlError("needs a host")
    out: list[tuple[str, int]] = []
    for item in hostlist.split(","):
        if not item:
            raise RedisUrlError("has an empty host in its host list")
        if item.startswith("["):  # [IPv6]:port
            host, bracket, rest = item[1:].partition("]")
            if not bracket or (rest and not rest.startswith(":")):
                raise RedisUrlError("has a malformed [IPv6] host")
            port_text = rest[1:]
        else:
            host, _, port_text = item.partition(":")
        if not host:
            raise RedisUrlError("has an empty host")
        port = default_port
        if port_text:
            if not port_text.isdigit() or not 0 < int(port_text) < 65536:
                raise RedisUrlError(f"has an invalid port {port_text!r}")
            port = int(port_text)
        out.append((host, port))
    if len(out) > 1 and not several:
        raise RedisUrlError(
            "lists several hosts: use redis+sentinel:// or redis+cluster:// for that"
        )
    return tuple(out)


def _db(text: str) -> int:
    if not text.isdigit() or int(text) > 1_000_000:
        raise RedisUrlError(f"has an invalid database number {text!r}")
    return int(text)


def _options(query: str, mode: Mode, tls: bool) -> dict[str, str]:
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError as exc:
        raise RedisUrlError("has a malformed query string") from exc
    allowed = set()
    if tls:
        allowed |= _TLS_OPTIONS
    if mode == "sentinel":
        allowed |= _SENTINEL_OPTIONS
    if mode == "unix":
        allowed.add("db")
    out: dict[str, str] = {}
    for name, value in pairs:
        if name in out:
            raise RedisUrlError(f"repeats the option {name!r}")
        if name not in allowed:
            if name in _TLS_OPTIONS:
                raise RedisUrlError(f"option {name!r} needs a TLS scheme (rediss…)")
            raise RedisUrlError(f"has an unknown option {name!r}")
        if not value:
            raise RedisUrlError(f"option {name!r} is empty")
        out[name] = value
    if "ssl_cert_reqs" in out and out["ssl_cert_reqs"] not in _CERT_REQS:
        raise RedisUrlError("option 'ssl_cert_reqs' must be required, optional or none")
    if "ssl_check_hostname" in out and out["ssl_check_hostname"].lower() not in _BOOLEANS:
        raise RedisUrlError("option 'ssl_check_hostname' must be true or false")
    if ("ssl_certfile" in out) != ("ssl_keyfile" in out):
        raise RedisUrlError("options 'ssl_certfile' and 'ssl_keyfile' go together")
    return out


def tls_settings(target: RedisTarget, files: TlsFiles | None) -> dict[str, Any]:
    """The ``ssl_*`` keyword arguments for redis-py, from the URL and the configuration.

    A CA or client certificate given both ways is refused rather than silently picking one.
    """
    files = files or TlsFiles()
    if not target.tls:
        if files:
            raise RedisUrlError("TLS files are configured but the URL is not rediss…://")
        return {}
    opts = target.options
    if files.ca_file is not None and "ssl_ca_certs" in opts:
        raise RedisUrlError("the CA is given both as ssl_ca_certs and redis_tls_ca_file")
    if files.cert_file is not None and "ssl_certfile" in opts:
        raise RedisUrlError(
            "the client certificate is given both in the URL and in redis_tls_cert_file"
        )
    ca = str(files.ca_file) if files.ca_file is not None else opts.get("ssl_ca_certs")
    cert = str(files.cert_file) if files.cert_file is not None else opts.get("ssl_certfile")
    key = str(files.key_file) if files.key_file is not None else opts.get("ssl_keyfile")
    out: dict[str, Any] = {
        "ssl": True,
        "ssl_cert_reqs": opts.get("ssl_cert_reqs", "required"),
        "ssl_check_hostname": _BOOLEANS[opts.get("ssl_check_hostname", "true").lower()],
    }
    if out["ssl_cert_reqs"] == "none":
        out["ssl_check_hostname"] = False  # the ssl module refuses hostname checks without CA
    if ca is not None:
        out["ssl_ca_certs"] = ca
    if cert is not None:
        out["ssl_certfile"] = cert
        out["ssl_keyfile"] = key
    return out


# ----------------------------------------------------------------------------- clients
@dataclass
class Connections:
    """The clients one :class:`~idtoken.store.redis.RedisStore` uses.

    ``commands`` is a ``redis.asyncio.Redis`` or ``RedisCluster`` (retrying, pooled);
    ``events`` is the dedicated event-stream client (standalone, Sentinel) and ``None`` for a
    cluster, where :meth:`node_client` makes one per node that owns subscribed channels.
    """

    target: RedisTarget
    commands: Any
    events: Any
    lane: RespClient | None = None
    _node_kwargs: dict[str, Any] = field(default_factory=dict, repr=False)
    _closers: list[Any] = field(default_factory=list, repr=False)

    @property
    def cluster(self) -> bool:
        return self.target.mode == "cluster"

    def node_client(self, host: str, port: int) -> Any:
        """A client for one cluster node's event stream: one connection, never retrying,
        RESP2 (sharded messages arrive as plain replies), no automatic health check (the
        reader pings on its own)."""
        import redis.asyncio as aioredis

        return aioredis.Redis(host=host, port=port, **self._node_kwargs)

    async def aclose(self) -> None:
        for closer in (self.lane, self.commands, self.events, *self._closers):
            if closer is not None:
                with contextlib.suppress(Exception):
                    await closer.aclose()


def open_connections(url: str, tls: TlsFiles | None = None) -> Connections:
    """Build (but do not connect) the clients for ``url``. Raises :class:`RedisUrlError`."""
    import redis.asyncio as aioredis
    from redis.asyncio.cluster import ClusterNode, RedisCluster
    from redis.asyncio.retry import Retry
    from redis.asyncio.sentinel import Sentinel
    from redis.backoff import ExponentialBackoff, NoBackoff

    target = parse_redis_url(url)
    ssl_kwargs = tls_settings(target, tls)
    auth = {"username": target.username, "password": target.password}
    common: dict[str, Any] = {
        "decode_responses": True,
        "socket_connect_timeout": CONNECT_TIMEOUT,
        **auth,
        **ssl_kwargs,
    }

    def command_retry() -> Retry:
        return Retry(ExponentialBackoff(cap=0.2, base=0.02), 2)

    def never_retry() -> Retry:
        return Retry(NoBackoff(), 0)

    if target.mode == "cluster":
        cluster = RedisCluster(
            startup_nodes=[ClusterNode(h, p) for h, p in target.hosts],
            socket_timeout=COMMAND_TIMEOUT,
            health_check_interval=HEALTH_CHECK_INTERVAL,
            retry=command_retry(),
            max_connections=256,
            **common,
        )
        node_kwargs = {
            **common,
            "socket_timeout": COMMAND_TIMEOUT,
            "retry": never_retry(),
            "max_connections": 1,
            "protocol": 2,
        }
        return Connections(target, cluster, None, _node_kwargs=node_kwargs)

    if target.mode == "sentinel":
        sentinel_kwargs: dict[str, Any] = {
            "socket_connect_timeout": SENTINEL_TIMEOUT,
            "socket_timeout": SENTINEL_TIMEOUT,
            "retry": never_retry(),
            "username": target.options.get("sentinel_username"),
            "password": target.options.get("sentinel_password"),
            **ssl_kwargs,
        }
        sentinel = Sentinel(target.hosts, sentinel_kwargs=sentinel_kwargs)  # type: ignore[no-untyped-call]
        assert target.service_name is not None
        master = sentinel.master_for(
            target.service_name,
            db=target.db,
            socket_timeout=COMMAND_TIMEOUT,
            health_check_interval=HEALTH_CHECK_INTERVAL,
            retry=command_retry(),
            max_connections=256,
            **common,
        )
        events = sentinel.master_for(
            target.service_name,
            db=target.db,
            health_check_interval=HEALTH_CHECK_INTERVAL,
            retry=never_retry(),
            **common,
        )
        return Connections(target, master, events, _closers=[sentinel])

    where: dict[str, Any]
    if target.mode == "unix":
        where = {"unix_socket_path": target.socket_path, "db": target.db}
    else:
        host, port = target.hosts[0]
        where = {"host": host, "port": port, "db": target.db}
    standalone = aioredis.Redis(
        **where,
        socket_timeout=COMMAND_TIMEOUT,
        health_check_interval=HEALTH_CHECK_INTERVAL,
        retry=command_retry(),
        max_connections=256,
        **common,
    )
    events = aioredis.Redis(
        **where,
        health_check_interval=HEALTH_CHECK_INTERVAL,
        retry=never_retry(),
        **common,
    )
    return Connections(target, standalone, events, lane=_lane(target, ssl_kwargs))


def ssl_context(ssl_kwargs: Mapping[str, Any]) -> ssl.SSLContext:
    """The client TLS context redis-py would build from the same ``ssl_*`` settings."""
    context = ssl.create_default_context()
    context.check_hostname = bool(ssl_kwargs["ssl_check_hostname"])
    context.verify_mode = {
        "required": ssl.CERT_REQUIRED,
        "optional": ssl.CERT_OPTIONAL,
        "none": ssl.CERT_NONE,
    }[ssl_kwargs["ssl_cert_reqs"]]
    if "ssl_ca_certs" in ssl_kwargs:
        context.load_verify_locations(cafile=ssl_kwargs["ssl_ca_certs"])
    if "ssl_certfile" in ssl_kwargs:
        context.load_cert_chain(ssl_kwargs["ssl_certfile"], ssl_kwargs["ssl_keyfile"])
    return context


def _lane(target: RedisTarget, ssl_kwargs: Mapping[str, Any]) -> RespClient:
    """The lean connection to a standalone server or unix socket, with the same
    credentials, database and TLS settings as the redis-py clients."""
    handshake: list[list[str | int]] = []
    if target.password is not None:
        handshake.append(["AUTH", target.username or "default", target.password])
    if target.db:
        handshake.append(["SELECT", target.db])

    async def opener(link: Link) -> None:
        loop = asyncio.get_running_loop()
        if target.mode == "unix":
            assert target.socket_path is not None
            await loop.create_unix_connection(lambda: link, target.socket_path)
            return
        host, port = target.hosts[0]
        if ssl_kwargs:
            context = ssl_context(ssl_kwargs)
            await loop.create_connection(
                lambda: link, host, port, ssl=context, server_hostname=host
            )
        else:
            await loop.create_connection(lambda: link, host, port)

    return RespClient(
        opener,
        handshake=handshake,
        command_timeout=COMMAND_TIMEOUT,
        connect_timeout=CONNECT_TIMEOUT,
    )
