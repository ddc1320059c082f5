"""The ``idtoken-operator`` command."""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from collections.abc import Sequence

from idtoken.errors import ConfigError
from idtoken.settings import ENV_CONFIG, Settings, config_path, load_settings, secret_digest


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        result: int = args.handler(args)
        return result
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="idtoken-operator", description="IDToken Operator: passwordless out-of-band login"
    )
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument(
            "--config", metavar="FILE", help=f"TOML configuration (default: ${ENV_CONFIG})"
        )
        return p

    serve = command("serve", "run the operator")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.add_argument(
        "--http",
        default="auto",
        choices=["auto", "httptools", "h11"],
        help="HTTP/1.1 parser (default auto: httptools); either one bounds request heads",
    )
    serve.add_argument(
        "--drain-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="on SIGTERM, how long in-flight requests may take to finish (default 10)",
    )
    serve.set_defaults(handler=_serve)

    check = command("check-config", "load the configuration and every key it names, then exit")
    check.set_defaults(handler=_check_config)

    keys = command("keys", "manage the ES256 signing keys")
    keys_sub = keys.add_subparsers(required=True, metavar="ACTION")
    gen = keys_sub.add_parser("generate", help="create a new signing key in keys_dir")
    gen.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS)
    gen.set_defaults(handler=_keys_generate)
    rot = keys_sub.add_parser(
        "rotate", help="add a key that is published now and starts signing after --delay"
    )
    rot.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS)
    rot.add_argument(
        "--delay",
        type=int,
        default=3600,
        help="seconds before the new key signs (default 3600, the JWKS max-age)",
    )
    rot.set_defaults(handler=_keys_rotate)
    lst = keys_sub.add_parser("list", help="list the signing keys in keys_dir and their states")
    lst.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS)
    lst.set_defaults(handler=_keys_list)

    services = command("services", "help register relying-party services")
    services_sub = services.add_subparsers(required=True, metavar="ACTION")
    sec = services_sub.add_parser(
        "secret", help="print a new client secret and the client_secret_sha256 for the config"
    )
    sec.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS)
    sec.set_defaults(handler=_services_secret)
    tokens = command("tokens", "inspect and manage enrolled tokens (needs redis_url)")
    tokens_sub = tokens.add_subparsers(required=True, metavar="ACTION")
    for name, help_text in (
        ("show", "show what the operator stores about a token (no identity claims)"),
        ("revoke", "revoke a token: logins refused, pending sessions ended"),
        ("unlock", "clear a token's failed-verification lock and fraud-report pause"),
    ):
        p = tokens_sub.add_parser(name, help=help_text)
        p.add_argument("token_id", metavar="TOKEN")
        p.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS)
        p.set_defaults(handler=_tokens, action=name)
    p = tokens_sub.add_parser("list", help="list enrolled tokens")
    p.add_argument("--limit", type=int, default=1000)
    p.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS)
    p.set_defaults(handler=_tokens, action="list", token_id=None)

    secret = command(
        "secret", "the operator secret (OpenID Connect and CIBA; oidc.secret_key_file)"
    )
    secret_sub = secret.add_subparsers(required=True, metavar="ACTION")
    for name, help_text in (
        ("generate", "create oidc.secret_key_file if it does not exist; print its fingerprint"),
        ("fingerprint", "print the file's fingerprint and the one the store records"),
        (
            "adopt",
            "record the file's secret as the one every instance must use (new pairwise subs)",
        ),
    ):
        p = secret_sub.add_parser(name, help=help_text)
        p.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS)
        if name == "adopt":
            p.add_argument(
                "--change-pairwise-subjects",
                action="store_true",
                help="required: confirms that every pairwise sub changes with the secret",
            )
        p.set_defaults(handler=_secret, action=name)

    demo = sub.add_parser("demo", help="demo helpers")
    demo_sub = demo.add_subparsers(required=True, metavar="ACTION")
    init = demo_sub.add_parser("init", help="write a demo configuration into a directory")
    init.add_argument("--dir", default="var", help="directory (default var)")
    init.add_argument(
        "--config",
        metavar="FILE",
        help="the file to write (default DIR/demo.toml); its directory replaces --dir",
    )
    init.add_argument("--issuer", default="http://127.0.0.1:8000", help="the operator's URL")
    init.set_defaults(handler=_demo_init)
    return parser


def _tokens(args: argparse.Namespace) -> int:
    import asyncio
    import json

    from idtoken.clock import SystemClock
    from idtoken.store.base import token_summary
    from idtoken.store.factory import open_redis_store

    settings = _settings(args)
    if not settings.redis_url:
        raise ConfigError(
            "redis_url", "token commands need Redis: the embedded store lives inside the server"
        )
    clock = SystemClock()

    async def run() -> int:
        store = open_redis_store(settings, clock)
        try:
            if args.action == "list":
                for device in await store.list_devices(limit=args.limit):
                    print(json.dumps(token_summary(device)))
                return 0
            if args.action == "show":
                found = await store.get_device(args.token_id)
                if found is not None:
                    print(json.dumps(token_summary(found), indent=2))
                    return 0
            elif args.action == "revoke":
                if await store.revoke_token(args.token_id, now=clock.now()):
                    print(f"revoked {args.token_id}")
                    return 0
            elif await store.unlock_token(args.token_id):
                print(f"unlocked {args.token_id}")
                return 0
            print(f"no such token: {args.token_id}", file=sys.stderr)
            return 1
        finally:
            await store.aclose()

    return asyncio.run(run())


def _secret(args: argparse.Namespace) -> int:
    import asyncio

    from idtoken.clock import SystemClock
    from idtoken.oidc.runtime import FINGERPRINT_NAME
    from idtoken.oidc.secret import SecretError, load_or_create_secret
    from idtoken.store.factory import open_redis_store

    settings = _settings(args)
    try:
        secret = load_or_create_secret(settings.oidc.secret_key_file)
    except SecretError as exc:
        raise ConfigError("oidc.secret_key_file", str(exc)) from None
    print(f"file:  {secret.fingerprint}  {settings.oidc.secret_key_file}")
    if args.action == "generate":
        return 0
    if not settings.redis_url:
        print("store: the embedded store (one process): nothing is shared")
        return 0
    if args.action == "adopt" and not args.change_pairwise_subjects:
        print(
            "adopt changes every pairwise subject the operator has issued; "
            "repeat with --change-pairwise-subjects to go ahead",
            file=sys.stderr,
        )
        return 2

    async def run() -> int:
        store = open_redis_store(settings, SystemClock())
        try:
            recorded = await store.register_secret(
                FINGERPRINT_NAME, secret.fingerprint, replace=args.action == "adopt"
            )
        finally:
            await store.aclose()
        print(f"store: {recorded}")
        return 0 if recorded == secret.fingerprint else 1

    return asyncio.run(run())


def _demo_init(args: argparse.Namespace) -> int:
    from pathlib import Path

    from idtoken.demo.config import write_demo_config

    if args.config:
        target = Path(args.config)
        written = write_demo_config(target.parent, args.issuer, name=target.name)
    else:
        written = write_demo_config(Path(args.dir), args.issuer)
    print(written)
    return 0


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(config_path(getattr(args, "config", None)))


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from idtoken import logs
    from idtoken.httplimits import http_protocol

    path = config_path(args.config)
    settings = load_settings(path)
    # Fail here, with a clear message, rather than inside a worker.
    _build(settings)
    os.environ[ENV_CONFIG] = str(path.resolve())
    os.environ["IDTOKEN_LOG_LEVEL"] = args.log_level.upper()  # read by every worker
    if args.workers > 1:
        _prepare_multiprocess_metrics()
    logs.configure(args.log_level.upper())
    uvicorn.run(
        "idtoken.cli:app_from_environment",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_config=None,
        log_level=args.log_level,
        access_log=False,
        http=http_protocol(args.http, settings.server),  # the [server] bounds on request heads
        proxy_headers=True,
        server_header=False,
        ws="websockets-sansio",
        ws_max_size=4096,
        ws_per_message_deflate=False,
        ws_ping_interval=20.0,
        ws_ping_timeout=20.0,
        timeout_keep_alive=15,
        # On SIGTERM uvicorn stops accepting, closes sockets with 1012 (browsers reconnect to
        # another instance and re-read the stored result) and lets requests finish.
        timeout_graceful_shutdown=max(0.0, args.drain_timeout),
        backlog=2048,
    )
    return 0


def _prepare_multiprocess_metrics() -> None:
    """Workers share metric values through files in a fresh directory (prometheus-client's
    multi-process mode); it must be set before the workers import prometheus_client."""
    import tempfile

    from idtoken.metrics import MULTIPROC_ENV

    if not os.environ.get(MULTIPROC_ENV):
        os.environ[MULTIPROC_ENV] = tempfile.mkdtemp(prefix="idtoken-metrics-")


def app_from_environment() -> object:
    """uvicorn's factory: each worker builds its app from ``IDTOKEN_CONFIG``."""
    from idtoken import logs

    logs.configure(os.environ.get("IDTOKEN_LOG_LEVEL", "INFO").upper())
    app = _build(load_settings(config_path(None)))
    _tune_gc()
    return app


def _tune_gc() -> None:
    """Move everything built at start-up out of the collector's sight, so that full
    collections (which stall the whole worker) have less to scan. The generation thresholds
    stay at their defaults: larger ones made the middle generation's collections long
    enough to show in the approval latency's tail."""
    import gc

    gc.collect()
    gc.freeze()


def _build(settings: Settings) -> object:
    from idtoken.app import create_app

    try:
        return create_app(settings)
    except ConfigError:
        raise
    except Exception as exc:
        from idtoken.keys.signing import KeyStoreError

        if isinstance(exc, KeyStoreError | ValueError | OSError):
            raise ConfigError("keys", str(exc)) from exc
        raise


def _check_config(args: argparse.Namespace) -> int:
    from idtoken.app import load_issuers
    from idtoken.keys.signing import KeyStoreError, load_or_create

    settings = _settings(args)
    load_issuers(settings)
    try:
        keys = (
            load_or_create(settings.keys_dir, create=False)
            if any(settings.keys_dir.glob("*.pem"))
            else None
        )
    except KeyStoreError as exc:
        raise ConfigError("keys_dir", str(exc)) from exc
    print(
        f"configuration OK: {len(settings.services)} service(s), "
        f"{len(settings.enrollment_issuers)} enrollment issuer(s), "
        f"store: {'redis' if settings.redis_url else 'embedded (single process)'}, "
        f"signing keys: {len(keys.kids) if keys else 'none yet (created on first start)'}"
    )
    return 0


def _keys_generate(args: argparse.Namespace) -> int:
    from idtoken.keys.signing import generate

    key = generate(_settings(args).keys_dir)  # signs at once: for a new deployment
    print(key.kid)
    return 0


def _keys_rotate(args: argparse.Namespace) -> int:
    import time

    from idtoken.keys.signing import JWKS_MAX_AGE, generate

    if args.delay < JWKS_MAX_AGE:
        print(
            f"warning: a delay under {JWKS_MAX_AGE} s (the JWKS max-age) lets relying parties "
            "with a cached JWKS see tokens signed by a key they do not know yet",
            file=sys.stderr,
        )
    key = generate(_settings(args).keys_dir, activates_at=time.time() + max(0, args.delay))
    print(f"{key.kid}\tpublished now, signs from {_iso(key.activates_at)}")
    return 0


def _keys_list(args: argparse.Namespace) -> int:
    from idtoken.keys.signing import keep_after_retire, load_or_create

    settings = _settings(args)
    keys = load_or_create(
        settings.keys_dir, create=False, keep_after_retire=keep_after_retire(settings)
    )
    print("kid\tstate\tsigns from\tretired at\tpublished until")
    for s in keys.states():
        print(
            f"{s.kid}\t{s.state}\t{_iso(s.activates_at)}\t{_iso(s.retired_at)}\t"
            f"{_iso(s.published_until)}"
        )
    return 0


def _iso(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    from idtoken.ids import iso_z

    return iso_z(epoch)


def _services_secret(args: argparse.Namespace) -> int:
    secret = secrets.token_urlsafe(32)
    print(f"client secret (give to the relying party): {secret}")
    print(f'client_secret_sha256 = "{secret_digest(secret)}"')
    return 0
