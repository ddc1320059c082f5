"""Test support: real servers (redis-server, uvicorn), configuration files and token minting.

Nothing here replaces the operator's own code: tests drive it through HTTP and WebSocket, with
a real Redis and a real uvicorn, exactly as clients would.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from starlette.applications import Starlette

from idtoken.client import Device, RelyingParty

REPO = Path(__file__).resolve().parents[1]
ISSUER_URL = "https://integration.test"
ENROLL_AUDIENCE = "idtoken-operator"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


# ----------------------------------------------------------------------------- redis-server
@dataclass
class RedisServer:
    port: int
    directory: Path
    process: subprocess.Popen[bytes]
    extra_args: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def cli(self, *args: str) -> str:
        out = subprocess.run(
            ["redis-cli", "-p", str(self.port), *args], capture_output=True, check=True, timeout=10
        )
        return out.stdout.decode().strip()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def restart(self) -> None:
        self.stop()
        self.process = _spawn_redis(self.port, self.directory, self.extra_args)


def redis_binary() -> str:
    path = shutil.which("redis-server")
    if path is None:
        raise RuntimeError(
            "redis-server is not installed: ./scripts/test installs it (apt-get redis-server)"
        )
    return path


def _spawn_redis(port: int, directory: Path, extra: tuple[str, ...]) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [
            redis_binary(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(directory),
            "--save",
            "",
            "--daemonize",
            "no",
            "--protected-mode",
            "yes",
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return proc
        except OSError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {proc.returncode}")
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("redis-server did not start")


@contextlib.contextmanager
def redis_server(*extra: str) -> Iterator[RedisServer]:
    directory = Path(tempfile.mkdtemp(prefix="idtoken-redis-"))
    port = free_port()
    server = RedisServer(port, directory, _spawn_redis(port, directory, extra), extra)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


# ----------------------------------------------------------------------------- configuration
@dataclass
class Issuer:
    """A test integration server with its own key (RSA by default)."""

    issuer: str = ISSUER_URL
    audience: str = ENROLL_AUDIENCE
    kind: str = "RSA"
    private_key: Any = None

    def __post_init__(self) -> None:
        if self.private_key is None:
            self.private_key = (
                rsa.generate_private_key(public_exponent=65537, key_size=2048)
                if self.kind == "RSA"
                else ec.generate_private_key(ec.SECP256R1())
            )

    @property
    def alg(self) -> str:
        return "RS256" if isinstance(self.private_key, rsa.RSAPrivateKey) else "ES256"

    def public_pem(self) -> bytes:
        key = self.private_key.public_key()
        return bytes(
            key.public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    def mint(
        self,
        sub: str = "user-1",
        *,
        lifetime: int = 300,
        now: float | None = None,
        header: Mapping[str, Any] | None = None,
        drop: tuple[str, ...] = (),
        **claims: Any,
    ) -> str:
        t = int(time.time() if now is None else now)
        payload: dict[str, Any] = {
            "sub": sub,
            "iss": self.issuer,
            "aud": self.audience,
            "iat": t,
            "exp": t + lifetime,
            "jti": b64url(os.urandom(12)),
        }
        payload.update(claims)
        for name in drop:
            payload.pop(name, None)
        hdr = {"alg": self.alg, "typ": "JWT", **(header or {})}
        return sign_jws(hdr, payload, self.private_key)


def sign_jws(
    header: Mapping[str, Any], payload: Any, private_key: Any, alg: str | None = None
) -> str:
    """A compact JWS made with the cryptography library directly (independent of our code)."""
    h = b64url(json.dumps(header, separators=(",", ":")).encode())
    p = b64url(payload if isinstance(payload, bytes) else json.dumps(payload).encode())
    signing_input = f"{h}.{p}".encode()
    alg = alg or str(header.get("alg"))
    if isinstance(private_key, rsa.RSAPrivateKey):
        sig = private_key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    else:
        r, s = decode_dss_signature(private_key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return f"{h}.{p}.{b64url(sig)}"


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(type(value))


DEFAULT_SERVICE: dict[str, Any] = {
    "id": "shop",
    "name": "Example Shop",
    "audience": "shop-audience",
    "allowed_scopes": [
        "identity:name",
        "identity:age_over_18",
        "identity:date_of_birth",
        "identity:nationality",
        "identity:trust_level",
        "identity:basic",
        "identity:full",
        "identity:document",
        "identity:email",
    ],
    "default_scopes": ["identity:name"],
}


@dataclass
class OperatorConfig:
    directory: Path
    redis_url: str | None = None
    issuers: list[Issuer] = field(default_factory=lambda: [Issuer()])
    services: list[dict[str, Any]] = field(default_factory=lambda: [dict(DEFAULT_SERVICE)])
    limits: dict[str, Any] = field(default_factory=dict)
    extra: str = ""
    issuer_url: str = "http://127.0.0.1:8000"
    # The loopback push receivers of the tests are not public addresses.
    push_private_networks: list[str] = field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])

    def write(self) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        lines = [f"issuer = {toml_value(self.issuer_url)}", 'keys_dir = "keys"']
        if self.redis_url:
            lines.append(f"redis_url = {toml_value(self.redis_url)}")
        lines += [
            "",
            "[push]",
            'vapid_private_key_file = "vapid.pem"',
            'vapid_subject = "mailto:ops@example.test"',
            f"allow_private_networks = {toml_value(self.push_private_networks)}",
        ]
        for service in self.services:
            lines += ["", "[[services]]"]
            lines += [f"{k} = {toml_value(v)}" for k, v in service.items()]
        if self.limits:
            lines += ["", "[limits]"] + [f"{k} = {toml_value(v)}" for k, v in self.limits.items()]
        for i, issuer in enumerate(self.issuers):
            pem = self.directory / f"issuer{i}.pem"
            pem.write_bytes(issuer.public_pem())
            lines += [
                "",
                "[[enrollment_issuers]]",
                f"issuer = {toml_value(issuer.issuer)}",
                f"audience = {toml_value(issuer.audience)}",
                f'public_key_file = "{pem.name}"',
                "trust_level = 1",
            ]
        path = self.directory / "operator.toml"
        path.write_text("\n".join(lines) + "\n" + self.extra)
        return path


# ----------------------------------------------------------------------------- servers
@contextlib.asynccontextmanager
async def serve_in_process(app: Starlette) -> AsyncIterator[str]:
    """Run ``app`` on a real uvicorn server in this event loop; yields its base URL."""
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_config=None,
        access_log=False,
        lifespan="on",
        ws="websockets-sansio",
        ws_max_size=4096,
        ws_per_message_deflate=False,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    for _ in range(500):
        if server.started or task.done():
            break
        await asyncio.sleep(0.01)
    if not server.started:
        task.cancel()
        raise RuntimeError("uvicorn did not start")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=15)


class OperatorProcess:
    """``idtoken-operator serve`` in a child process, as an operator would run it."""

    def __init__(
        self,
        config_file: Path,
        *,
        env: Mapping[str, str] | None = None,
        args: tuple[str, ...] = (),
    ) -> None:
        self.config_file = config_file
        self.args = args
        self.port = free_port()
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None
        self.log = config_file.parent / f"operator-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> OperatorProcess:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "idtoken",
                    "serve",
                    "--config",
                    str(self.config_file),
                    "--port",
                    str(self.port),
                    *self.args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"operator exited:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/.well-known/jwks.json", timeout=0.5).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"operator did not start:\n{self.log.read_text()[-3000:]}")

    def signal(self, sig: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> OperatorProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def logs(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def running(procs: Sequence[OperatorProcess], timeout: float = 20.0) -> Iterator[None]:
    """Start ``procs`` one after the other (the first creates the signing keys and any operator
    secret, the others read them); stop every one of them at the end, whatever happened."""
    try:
        for proc in procs:
            proc.start(timeout=timeout)
        yield
    finally:
        for proc in procs:
            proc.stop()


# ----------------------------------------------------------------------------- instances
@dataclass
class Node:
    """One operator instance seen from a test: its process, an HTTP client to it and a
    relying party bound to that client."""

    proc: OperatorProcess
    http: httpx.AsyncClient
    rp: RelyingParty

    def device(self, device: Device) -> Device:
        """The same phone (key and enrollment) talking to this instance."""
        twin = Device(self.http, device_id=device.device_id, private_key=device.private_key)
        twin.enrollment = device.enrollment
        return twin


# ----------------------------------------------------------------------------- browser sockets
async def recv_json(sock: Any, timeout: float = 5.0) -> dict[str, Any]:
    """The next message on a ``websockets`` client socket, as JSON."""
    message: dict[str, Any] = json.loads(await asyncio.wait_for(sock.recv(), timeout))
    return message


async def closed_code(sock: Any, timeout: float = 10.0) -> int | None:
    """Wait for the server to close the socket; its close code."""
    import websockets

    try:
        await asyncio.wait_for(sock.recv(), timeout)
    except websockets.ConnectionClosed:
        code: int | None = sock.close_code
        return code
    raise AssertionError("the socket received a message instead of closing")


def otp_ready(started: Any) -> dict[str, Any]:
    """The ``otp_ready`` message a socket for ``started`` (an Initiation) must receive."""
    return {
        "type": "otp_ready",
        "sessionId": started.session_id,
        "autoPassword": started.auto_password,
        "expiresAt": started.expires_at,
    }
