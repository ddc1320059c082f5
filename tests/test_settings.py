"""Configuration: contract §4 parsed into frozen settings; every error names its key."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from idtoken.errors import ConfigError
from idtoken.settings import LimitSettings, load_settings, parse_settings
from support import Issuer, OperatorConfig

CONTRACT_EXAMPLE = """
issuer = "https://auth.example.com"
redis_url = "redis://127.0.0.1:6379/0"
keys_dir = "var/keys"

[push]
vapid_private_key_file = "var/vapid.pem"
vapid_subject = "mailto:ops@example.com"

[[services]]
id = "shop"
name = "Example Shop"
audience = "shop-audience"
allowed_scopes = ["identity:name", "identity:age_over_18"]
default_scopes = ["identity:name"]
client_secret_sha256 = "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"
allowed_origins = ["https://shop.example"]
otp_mode = "display"
session_ttl = 60
token_ttl = 3600

[limits]
max_pending_per_token = 3
pushes_per_token_per_10min = 5
max_failed_verifications = 100
not_me_pause = 900
enroll_per_ip_per_hour = 5
timestamp_skew = 30

[metrics]
token = "a-long-enough-metrics-token"

[[enrollment_issuers]]
issuer = "https://integration.example"
audience = "idtoken-operator"
public_key_file = "integration.pem"
trust_level = 1

[[enrollment_issuers]]
issuer = "https://id.uqudo.io"
audience = "clientid"
jwks_uri = "https://id.uqudo.io/api/.well-known/jwks.json"
format = "uqudo"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "operator.toml"
    path.write_text(text)
    return path


def test_contract_example_parses(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, CONTRACT_EXAMPLE), environ={})
    assert s.issuer == "https://auth.example.com"
    assert s.redis_url == "redis://127.0.0.1:6379/0"
    assert s.keys_dir == tmp_path / "var/keys"  # relative to the file's directory
    shop = s.services["shop"]
    assert shop.audience == "shop-audience" and shop.allowed_origins == ("https://shop.example",)
    assert shop.client_secret_sha256 is not None and len(shop.client_secret_sha256) == 32
    assert s.limits == LimitSettings()
    assert s.metrics.token == "a-long-enough-metrics-token"
    assert [i.format for i in s.enrollment_issuers] == ["jwt", "uqudo"]
    assert s.enrollment_issuers[1].trust_level == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.issuer = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        s.services["new"] = shop  # type: ignore[index]


def test_defaults(tmp_path: Path) -> None:
    text = (
        'issuer = "https://a.example"\n[[services]]\nid = "s"\nallowed_scopes = ["identity:name"]\n'
    )
    s = load_settings(write(tmp_path, text), environ={})
    svc = s.services["s"]
    assert (svc.name, svc.audience, svc.otp_mode, svc.session_ttl, svc.token_ttl) == (
        "s",
        "s",
        "display",
        60,
        3600,
    )
    assert svc.default_scopes == () and svc.client_secret_sha256 is None
    assert svc.allowed_origins is None
    assert s.redis_url is None and s.metrics.token is None
    assert s.keys_dir == tmp_path / "var/keys"


def test_environment_overrides(tmp_path: Path) -> None:
    env = {"IDTOKEN_REDIS_URL": "redis://10.0.0.1:6380/1", "IDTOKEN_ISSUER": "https://b.example"}
    s = load_settings(write(tmp_path, CONTRACT_EXAMPLE), environ=env)
    assert s.redis_url == "redis://10.0.0.1:6380/1"
    assert s.issuer == "https://b.example"


@pytest.mark.parametrize(
    ("patch", "key"),
    [
        ("session_ttl = 60", "services[0].session_ttl"),
        ('otp_mode = "display"', "services[0].otp_mode"),
        ("token_ttl = 3600", "services[0].token_ttl"),
        ("max_pending_per_token = 3", "limits.max_pending_per_token"),
        ("timestamp_skew = 30", "limits.timestamp_skew"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, patch: str, key: str) -> None:
    name = patch.split(" = ")[0]
    bad = CONTRACT_EXAMPLE.replace(patch, f'{name} = "nonsense"')
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, bad), environ={})
    assert info.value.key == key
    assert str(info.value).startswith(key)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('redis_url = "x"', "issuer"),
        ('issuer = "https://a"\nunknown = 1', "unknown"),
        ('issuer = "https://a"\n[limits]\nmax_pending = 3', "limits.max_pending"),
        (
            'issuer = "https://a"\n[[services]]\nid = "s"\nallowed_scopes = ["admin"]',
            "services[0].allowed_scopes",
        ),
        (
            'issuer = "https://a"\n[[services]]\nid = "s"\nallowed_scopes = ["identity:name"]\n'
            'default_scopes = ["identity:email"]',
            "services[0].default_scopes",
        ),
        (
            'issuer = "https://a"\n[[services]]\nid = "s"\nallowed_scopes = ["identity:name"]\n'
            'client_secret_sha256 = "abc"',
            "services[0].client_secret_sha256",
        ),
        (
            'issuer = "https://a"\n[[services]]\nid = "s|x"\nallowed_scopes = ["identity:name"]',
            "services[0].id",
        ),
        (
            'issuer = "https://a"\n[[services]]\nid = "s"\nallowed_scopes = ["identity:name"]\n'
            '[[services]]\nid = "s"\nallowed_scopes = ["identity:name"]',
            "services[1].id",
        ),
        (
            'issuer = "https://a"\n[[enrollment_issuers]]\nissuer = "i"\naudience = "a"',
            "enrollment_issuers[0].public_key_file",
        ),
        (
            'issuer = "https://a"\n[[enrollment_issuers]]\nissuer = "i"\naudience = "a"\n'
            'jwks_uri = "http://kyc.example/jwks"',
            "enrollment_issuers[0].jwks_uri",
        ),
        ('issuer = "https://a"\n[metrics]\ntoken = "short"', "metrics.token"),
        ('issuer = "https://a"\nredis_url = "http://x"', "redis_url"),
        ('issuer = "https://a"\n[push]\nvapid_subject = "ops"', "push.vapid_subject"),
        (
            'issuer = "https://a"\n[[services]]\nid = "s"\nallowed_scopes = ["identity:name"]\n'
            'allowed_origins = ["https://shop.example/path"]',
            "services[0].allowed_origins",
        ),
        ("issuer = ", "--config"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text), environ={})
    assert info.value.key == key


def test_loopback_http_jwks_uri_is_allowed() -> None:
    raw = {
        "issuer": "https://a",
        "enrollment_issuers": [
            {"issuer": "i", "audience": "a", "format": "uqudo", "jwks_uri": "http://127.0.0.1:9/j"}
        ],
    }
    s = parse_settings(raw, base_dir=Path("/"), environ={})
    assert s.enrollment_issuers[0].jwks_uri == "http://127.0.0.1:9/j"


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "idtoken", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )


def test_cli_check_config_reports_a_bad_key_and_exits_2(tmp_path: Path) -> None:
    path = write(tmp_path, 'issuer = "https://a"\n[limits]\ntimestamp_skew = 0\n')
    result = cli("check-config", "--config", str(path))
    assert result.returncode == 2
    assert "limits.timestamp_skew" in result.stderr


def test_cli_check_config_names_the_issuer_with_an_empty_key(tmp_path: Path) -> None:
    cfg = OperatorConfig(tmp_path / "c", issuers=[Issuer()])
    path = cfg.write()
    (path.parent / "issuer0.pem").write_text("")
    result = cli("check-config", "--config", str(path))
    assert result.returncode == 2
    assert "enrollment_issuers[0].public_key_file" in result.stderr
    assert "https://integration.test" in result.stderr


def test_cli_keys_generate_list_and_services_secret(tmp_path: Path) -> None:
    cfg = OperatorConfig(tmp_path / "c")
    path = cfg.write()
    assert cli("check-config", "--config", str(path)).returncode == 0
    kid = cli("keys", "generate", "--config", str(path)).stdout.strip()
    assert (path.parent / "keys" / f"{kid}.pem").exists()
    listed = cli("keys", "list", "--config", str(path)).stdout
    assert kid in listed and "active" in listed
    out = cli("services", "secret", "--config", str(path)).stdout
    secret = out.splitlines()[0].rsplit(" ", 1)[1]
    import hashlib

    assert hashlib.sha256(secret.encode()).hexdigest() in out


def test_cli_without_config_says_how_to_give_one(tmp_path: Path) -> None:
    import os

    env = {k: v for k, v in os.environ.items() if k != "IDTOKEN_CONFIG"}
    result = subprocess.run(
        [sys.executable, "-m", "idtoken", "check-config"], capture_output=True, text=True, env=env
    )
    assert result.returncode == 2 and "IDTOKEN_CONFIG" in result.stderr


def test_cli_demo_init_writes_a_configuration_that_loads(tmp_path: Path) -> None:
    target = tmp_path / "demo" / "site.toml"
    result = cli("demo", "init", "--config", str(target), "--issuer", "http://127.0.0.1:9")
    assert result.returncode == 0, result.stderr
    assert cli("check-config", "--config", str(target)).returncode == 0
    settings = load_settings(target, environ={})
    assert settings.demo.enabled and set(settings.services) == {"demo-shop", "demo-typed"}
    assert settings.services["demo-typed"].otp_mode == "typed"
