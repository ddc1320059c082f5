"""Redis over TLS (``rediss://``, CA from the URL or from ``redis_tls_ca_file``, client
certificates for mutual TLS), with an ACL user whose password is in the URL, and the URL forms
the configuration accepts.

Every certificate is made here with ``cryptography``: a CA, a server certificate for
127.0.0.1/localhost signed by it, a client certificate, and an unrelated CA that must be refused.
The servers are real ``redis-server`` processes listening only on a TLS port.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import json
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
import redis.asyncio as aioredis
import websockets
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from redis.exceptions import NoPermissionError

from idtoken.client import Device, RelyingParty
from idtoken.clock import ManualClock
from idtoken.errors import ConfigError
from idtoken.settings import parse_settings
from idtoken.store.base import Outcome, StoreUnavailable
from idtoken.store.connect import parse_redis_url
from idtoken.store.factory import open_store
from idtoken.store.redis import RedisStore
from support import OperatorConfig, OperatorProcess, free_port, redis_binary
from test_store_contract import Inbox, approve, approved_message, create, device_record, enroll

PASSWORD = "s3cret/with:odd@chars"
# The ACL documented in docs/scaling.md: the operator's keys and channels, nothing else.
OPERATOR_ACL = (
    "resetkeys resetchannels ~idtoken:* &idtoken:* -@all +@read +@write +@scripting "
    "+@pubsub +@connection -@dangerous +cluster|slots"
)


# ----------------------------------------------------------------------------- certificates
@dataclass
class Pki:
    directory: Path

    def path(self, name: str) -> Path:
        return self.directory / name

    @property
    def ca(self) -> Path:
        return self.path("ca.pem")

    @property
    def other_ca(self) -> Path:
        return self.path("other-ca.pem")


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _ca(directory: Path, stem: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(f"{stem} test CA"))
        .issuer_name(_name(f"{stem} test CA"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    (directory / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


def _leaf(
    directory: Path,
    stem: str,
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    usage: x509.ObjectIdentifier,
) -> None:
    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(stem))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    (directory / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(directory / f"{stem}.key", key)


@pytest.fixture(scope="module")
def pki() -> Iterator[Pki]:
    directory = Path(tempfile.mkdtemp(prefix="idtoken-pki-"))
    try:
        ca = _ca(directory, "ca")
        _ca(directory, "other-ca")
        _leaf(directory, "server", ca, ExtendedKeyUsageOID.SERVER_AUTH)
        _leaf(directory, "client", ca, ExtendedKeyUsageOID.CLIENT_AUTH)
        yield Pki(directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# ----------------------------------------------------------------------------- TLS servers
@dataclass
class TlsRedis:
    port: int
    process: subprocess.Popen[bytes]

    def url(self, query: str = "", userinfo: str = "") -> str:
        return f"rediss://{userinfo}127.0.0.1:{self.port}/0" + (f"?{query}" if query else "")


def _tls_ready(port: int, pki: Pki, client_cert: bool) -> bool:
    context = ssl.create_default_context(cafile=str(pki.ca))
    if client_cert:
        context.load_cert_chain(pki.path("client.pem"), pki.path("client.key"))
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=0.5) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as s,
        ):
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


@contextlib.contextmanager
def tls_redis(pki: Pki, *, auth_clients: bool, extra: tuple[str, ...] = ()) -> Iterator[TlsRedis]:
    directory = Path(tempfile.mkdtemp(prefix="idtoken-redis-tls-"))
    port = free_port()
    proc = subprocess.Popen(
        [
            redis_binary(),
            "--port",
            "0",
            "--tls-port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(directory),
            "--save",
            "",
            "--tls-cert-file",
            str(pki.path("server.pem")),
            "--tls-key-file",
            str(pki.path("server.key")),
            "--tls-ca-cert-file",
            str(pki.ca),
            "--tls-auth-clients",
            "yes" if auth_clients else "no",
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not _tls_ready(port, pki, auth_clients):
            if proc.poll() is not None:
                raise RuntimeError(f"redis-server (TLS) exited with {proc.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server (TLS) did not start")
            time.sleep(0.05)
        yield TlsRedis(port, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def tls_server(pki: Pki) -> Iterator[TlsRedis]:
    acl = ("--user", "idtoken", "on", f">{PASSWORD}", *OPERATOR_ACL.split())
    with tls_redis(pki, auth_clients=False, extra=acl) as server:
        yield server


async def _exercise(store: RedisStore) -> None:
    """Enough of the contract to prove scripts, reads and events all work on this link."""
    await store.start()
    try:
        await store.ping()
        assert store.events_connected
        token = f"tok-{time.monotonic_ns()}"
        await enroll(store, device_record(token), replay_id=f"jti-{token}")
        await create(store, "sess_a", token_id=token)
        inbox = Inbox()
        store.listen(token, "sess_a", inbox)
        assert (await approve(store, "sess_a", token_id=token)).outcome is Outcome.APPROVED
        assert (await inbox.next_event()).final == approved_message("sess_a")
        found = await store.find_session("sess_a")
        assert found is not None and found.state == "approved"
    finally:
        await store.aclose()


def _userinfo(user: str = "idtoken", password: str = PASSWORD) -> str:
    return f"{quote(user, safe='')}:{quote(password, safe='')}@"


# ----------------------------------------------------------------------------- tests
async def test_tls_with_the_ca_in_the_url_and_an_acl_user(tls_server: TlsRedis, pki: Pki) -> None:
    url = tls_server.url(f"ssl_ca_certs={pki.ca}", _userinfo())
    await _exercise(RedisStore(url, ManualClock(1_800_000_000.5)))


async def test_tls_with_the_ca_from_the_configuration(
    tls_server: TlsRedis, pki: Pki, tmp_path: Path
) -> None:
    shutil.copy(pki.ca, tmp_path / "redis-ca.pem")
    settings = parse_settings(
        {
            "issuer": "https://op.example",
            "redis_url": tls_server.url(userinfo=_userinfo()),
            "redis_tls_ca_file": "redis-ca.pem",  # relative to the configuration file
        },
        base_dir=tmp_path,
        environ={},
    )
    assert settings.redis_tls_ca_file == tmp_path / "redis-ca.pem"
    store = open_store(settings, ManualClock(1_800_000_000.5))
    assert isinstance(store, RedisStore)
    await _exercise(store)


async def test_tls_refuses_a_server_signed_by_another_ca(tls_server: TlsRedis, pki: Pki) -> None:
    store = RedisStore(tls_server.url(f"ssl_ca_certs={pki.other_ca}", _userinfo()), ManualClock(0))
    try:
        with pytest.raises(StoreUnavailable):
            await store.ping()
    finally:
        await store.aclose()


async def test_plain_connection_to_a_tls_port_is_unavailable(tls_server: TlsRedis) -> None:
    store = RedisStore(f"redis://{_userinfo()}127.0.0.1:{tls_server.port}/0", ManualClock(0))
    try:
        with pytest.raises(StoreUnavailable):
            await store.ping()
    finally:
        await store.aclose()


@pytest.mark.parametrize(
    "userinfo",
    [_userinfo(password="wrong"), _userinfo(user="nobody")],
    ids=["wrong-password", "unknown-user"],
)
async def test_acl_refuses_wrong_credentials(tls_server: TlsRedis, pki: Pki, userinfo: str) -> None:
    store = RedisStore(tls_server.url(f"ssl_ca_certs={pki.ca}", userinfo), ManualClock(0))
    try:
        with pytest.raises(StoreUnavailable):
            await store.ping()
    finally:
        await store.aclose()


async def test_the_documented_acl_confines_the_operator_to_its_keys(
    tls_server: TlsRedis, pki: Pki
) -> None:
    client = aioredis.Redis(
        host="127.0.0.1",
        port=tls_server.port,
        username="idtoken",
        password=PASSWORD,
        ssl=True,
        ssl_ca_certs=str(pki.ca),
    )
    try:
        assert await client.set("idtoken:probe", "1") is True
        with pytest.raises(NoPermissionError):
            await client.get("someone-else:key")
        with pytest.raises(NoPermissionError):
            await client.flushall()
        with pytest.raises(NoPermissionError):
            await client.publish("other-channel", "x")
    finally:
        await client.aclose()


async def test_mutual_tls_with_client_certificate_from_the_configuration(
    pki: Pki, tmp_path: Path
) -> None:
    with tls_redis(pki, auth_clients=True) as server:
        settings = parse_settings(
            {
                "issuer": "https://op.example",
                "redis_url": server.url(),
                "redis_tls_ca_file": str(pki.ca),
                "redis_tls_cert_file": str(pki.path("client.pem")),
                "redis_tls_key_file": str(pki.path("client.key")),
            },
            base_dir=tmp_path,
            environ={},
        )
        store = open_store(settings, ManualClock(1_800_000_000.5))
        assert isinstance(store, RedisStore)
        await _exercise(store)

        # Without a client certificate the server refuses the handshake.
        anonymous = RedisStore(server.url(f"ssl_ca_certs={pki.ca}"), ManualClock(0))
        try:
            with pytest.raises(StoreUnavailable):
                await anonymous.ping()
        finally:
            await anonymous.aclose()


@pytest.mark.parametrize(
    ("extra", "key", "message"),
    [
        ({"redis_tls_ca_file": "ca.pem"}, "redis_tls_ca_file", "needs a TLS redis_url"),
        (
            {"redis_tls_cert_file": "ca.pem"},
            "redis_tls_cert_file",
            "redis_tls_cert_file and redis_tls_key_file go together",
        ),
        ({"redis_tls_ca_file": "missing.pem"}, "redis_tls_ca_file", "file not found"),
    ],
)
def test_tls_configuration_errors_name_the_key(
    pki: Pki, tmp_path: Path, extra: dict[str, str], key: str, message: str
) -> None:
    shutil.copy(pki.ca, tmp_path / "ca.pem")
    url = "redis://127.0.0.1:6379/0" if message.startswith("needs") else "rediss://h:6380/0"
    with pytest.raises(ConfigError) as info:
        parse_settings(
            {"issuer": "https://op.example", "redis_url": url, **extra},
            base_dir=tmp_path,
            environ={},
        )
    assert str(info.value).startswith(f"{key}:") and message in str(info.value)


# ----------------------------------------------------------------------------- end to end
async def test_login_flow_over_tls_with_an_acl_user(
    tls_server: TlsRedis, pki: Pki, tmp_path: Path
) -> None:
    """An operator process whose only Redis access is TLS with the restricted ACL user."""
    url = tls_server.url(f"ssl_ca_certs={pki.ca}", _userinfo())
    config = OperatorConfig(tmp_path / "tls-op", redis_url=url)
    with OperatorProcess(config.write()) as proc:
        async with httpx.AsyncClient(base_url=proc.url, timeout=10) as http:
            device = Device(http, device_id="dev-tls")
            await device.enroll(config.issuers[0].mint("user-tls"))
            rp = RelyingParty(
                http, service_id="shop", issuer=config.issuer_url, audience="shop-audience"
            )
            started = await rp.initiate("user-tls")
            async with websockets.connect(rp.socket_url(started), compression=None) as sock:
                ready = json.loads(await asyncio.wait_for(sock.recv(), 5))
                assert ready["type"] == "otp_ready"
                resp = await device.approve(
                    started.session_id, started.auto_password, ["identity:name"]
                )
                assert resp.status_code == 200, resp.text
                approved = json.loads(await asyncio.wait_for(sock.recv(), 5))
                assert approved["type"] == "approved" and rp.hash_ok(started, approved)
            assert (await http.get("/readyz")).status_code == 200
        assert "NOPERM" not in proc.logs()


# ----------------------------------------------------------------------------- URL forms
@pytest.mark.parametrize(
    ("url", "mode", "hosts", "db", "service"),
    [
        ("redis://h", "standalone", [("h", 6379)], 0, None),
        ("rediss://u:p%40ss@h:6380/3", "standalone", [("h", 6380)], 3, None),
        ("redis://:only-password@[::1]:7000/0", "standalone", [("::1", 7000)], 0, None),
        ("unix:///run/redis.sock?db=2", "unix", [], 2, None),
        (
            "redis+sentinel://a,b:26380,c/svc",
            "sentinel",
            [("a", 26379), ("b", 26380), ("c", 26379)],
            0,
            "svc",
        ),
        ("rediss+sentinel://u:p@a:1/svc/4?sentinel_password=x", "sentinel", [("a", 1)], 4, "svc"),
        ("redis+cluster://n1,n2:7001", "cluster", [("n1", 6379), ("n2", 7001)], 0, None),
        ("rediss+cluster://u:p@n1:7000/", "cluster", [("n1", 7000)], 0, None),
    ],
)
def test_supported_redis_urls_parse(
    url: str, mode: str, hosts: list[tuple[str, int]], db: int, service: str | None
) -> None:
    target = parse_redis_url(url)
    assert (target.mode, list(target.hosts), target.db, target.service_name) == (
        mode,
        hosts,
        db,
        service,
    )
    assert "p@ss" not in target.describe() and "only-password" not in target.describe()


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://h", "must be a redis://"),
        ("redis+sentinel://a,b,c", "needs the service name"),
        ("redis://a,b", "lists several hosts"),
        ("redis+cluster://a/1", "only database 0"),
        ("redis://h/x", "invalid database"),
        ("redis://h:99999", "invalid port"),
        ("redis://h?ssl_ca_certs=/x", "needs a TLS scheme"),
        ("rediss://h?sslcacerts=/x", "unknown option"),
        ("rediss://h?ssl_cert_reqs=maybe", "required, optional or none"),
        ("rediss://h?ssl_certfile=/a", "go together"),
        ("redis://secret-user:secret-pw@h?x=1", "unknown option"),
        ("unix://host/path", "socket path"),
    ],
)
def test_unsupported_redis_urls_are_configuration_errors(
    tmp_path: Path, url: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as info:
        parse_settings(
            {"issuer": "https://op.example", "redis_url": url}, base_dir=tmp_path, environ={}
        )
    message = str(info.value)
    assert message.startswith("redis_url:") and problem in message
    assert "secret" not in message  # the URL (and its password) is never echoed


def test_the_environment_url_is_checked_like_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^redis_url: .*needs the service name"):
        parse_settings(
            {"issuer": "https://op.example"},
            base_dir=tmp_path,
            environ={"IDTOKEN_REDIS_URL": "redis+sentinel://a:26379"},
        )
