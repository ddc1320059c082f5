"""Integration servers' keys made exactly as seed 000 says, with openssl, in every accepted form.

Seed 000 gives the commands (RSA key, self-signed certificate, EC key, base64 of the PEM) and
three ways to hand the public half to the operator: a PEM public key, a PEM certificate, or the
base64 of either. Each form is configured here and must enroll a device with a token signed by
the matching private key. Then the keys that must stop the start (catalogue J04, J19, E07):
empty or missing files, RSA under 2048 bits, P-384, expired and not-yet-valid certificates; and
the names a key answers to in a token's ``kid`` (J08): a configured ``kid`` and its thumbprint.

openssl is required: if it is missing these tests fail, they do not skip.
"""

from __future__ import annotations

import datetime
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from joserfc.jwk import JWKRegistry

from conftest import OperatorFactory
from idtoken.app import create_app
from idtoken.errors import ConfigError
from idtoken.settings import load_settings
from support import Issuer, OperatorConfig


def sh(directory: Path, command: str) -> None:
    """Run one of seed 000's shell lines in ``directory`` (bash, for its redirections)."""
    subprocess.run(["bash", "-c", command], cwd=directory, check=True, capture_output=True)


def openssl(directory: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)


def private_key(path: Path) -> Any:
    return serialization.load_pem_private_key(path.read_bytes(), password=None)


def seed_rsa(directory: Path) -> Path:
    directory.mkdir()
    openssl(directory, "genrsa", "-out", "key.pem", "2048")
    openssl(directory, "rsa", "-in", "key.pem", "-outform", "PEM", "-pubout", "-out", "pubkey.pem")
    sh(directory, "base64 pubkey.pem > pubkey.pem.b64")
    return directory


def seed_certificate(directory: Path) -> Path:
    directory.mkdir()
    # Seed 000's command plus -subj, so that openssl does not prompt for the subject.
    openssl(
        directory,
        *("req", "-x509", "-newkey", "rsa:4096", "-keyout", "key.pem", "-out", "cert.pem"),
        *("-days", "3650", "-nodes", "-subj", "/CN=test"),
    )
    sh(directory, "openssl x509 -pubkey -noout -in cert.pem > pubkey.pem")
    openssl(directory, "x509", "-outform", "der", "-in", "cert.pem", "-out", "cert.der")
    sh(directory, "base64 cert.pem > cert.b64")
    return directory


def seed_ec(directory: Path) -> Path:
    directory.mkdir()
    openssl(directory, "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "key.pem")
    openssl(directory, "ec", "-in", "key.pem", "-pubout", "-out", "pubkey.pem")
    sh(directory, "base64 pubkey.pem > pubkey.pem.b64")
    return directory


def issuer_table(issuer: str, key_line: str, audience: str = "idtoken-operator") -> str:
    return (
        "\n[[enrollment_issuers]]\n"
        f"issuer = {json.dumps(issuer)}\n"
        f"audience = {json.dumps(audience)}\n"
        f"{key_line}\n"
    )


def key_file(kind: str, path: Path) -> str:
    return f"{kind} = {json.dumps(str(path))}"


def key_b64(path: Path) -> str:
    # The file's content as is, line breaks included (json.dumps gives a valid TOML string).
    return f"public_key_b64 = {json.dumps(path.read_text())}"


async def test_every_seed_000_key_form_enrolls(
    make_operator: OperatorFactory, redis_url: str, tmp_path: Path
) -> None:
    rsa_dir = seed_rsa(tmp_path / "rsa")
    cert_dir = seed_certificate(tmp_path / "cert")
    ec_dir = seed_ec(tmp_path / "ec")
    forms = {
        "https://rsa-pem.test": (rsa_dir, key_file("public_key_file", rsa_dir / "pubkey.pem")),
        "https://rsa-b64.test": (rsa_dir, key_b64(rsa_dir / "pubkey.pem.b64")),
        "https://rsa-b64-file.test": (
            rsa_dir,
            key_file("public_key_file", rsa_dir / "pubkey.pem.b64"),
        ),
        "https://cert.test": (cert_dir, key_file("certificate_file", cert_dir / "cert.pem")),
        "https://cert-b64.test": (cert_dir, key_b64(cert_dir / "cert.b64")),
        "https://cert-pubkey.test": (
            cert_dir,
            key_file("public_key_file", cert_dir / "pubkey.pem"),
        ),
        "https://ec-pem.test": (ec_dir, key_file("public_key_file", ec_dir / "pubkey.pem")),
        "https://ec-b64.test": (ec_dir, key_b64(ec_dir / "pubkey.pem.b64")),
    }
    extra = "".join(issuer_table(iss, line) for iss, (_, line) in forms.items())
    async with make_operator(
        issuers=[], extra=extra, limits={"enroll_per_ip_per_hour": 1000}
    ) as op:
        for i, (iss, (directory, _)) in enumerate(forms.items()):
            signer = Issuer(issuer=iss, private_key=private_key(directory / "key.pem"))
            device = op.device(f"device-{i}")
            enrolled = await device.enroll(signer.mint(f"user-{i}", given_name="Ada"))
            assert enrolled.token_id == f"user-{i}", iss
        # A key of one form does not verify another issuer's tokens.
        stranger = Issuer(
            issuer="https://rsa-pem.test", private_key=private_key(cert_dir / "key.pem")
        )
        resp = await op.http.post(
            "/enroll", json=op.device("device-x").enroll_body(stranger.mint("user-x"))
        )
        assert resp.status_code == 401 and resp.json()["error"] == "invalid_enrollment_token"


# ----------------------------------------------------------------------------- refused at start
def pem_public(key: Any) -> bytes:
    return bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def certificate(key: Any, *, not_before: datetime.datetime, not_after: datetime.datetime) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "integration.test")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


NOW = datetime.datetime.now(datetime.UTC)
DAY = datetime.timedelta(days=1)


def _bad_keys() -> dict[str, tuple[str, bytes | None, str]]:
    """label -> (config key, file content or None for a missing file, expected message part)."""
    # Deliberately weak: the operator must refuse it.
    rsa_1024 = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505
    rsa_2048 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return {
        "RSA 1024 public key": ("public_key_file", pem_public(rsa_1024), "1024 bits"),
        "RSA 1024 certificate": (
            "certificate_file",
            certificate(rsa_1024, not_before=NOW - DAY, not_after=NOW + 365 * DAY),
            "1024 bits",
        ),
        "expired certificate": (
            "certificate_file",
            certificate(rsa_2048, not_before=NOW - 30 * DAY, not_after=NOW - DAY),
            "expired",
        ),
        "not-yet-valid certificate": (
            "certificate_file",
            certificate(rsa_2048, not_before=NOW + DAY, not_after=NOW + 365 * DAY),
            "not valid before",
        ),
        "P-384 key": (
            "public_key_file",
            pem_public(ec.generate_private_key(ec.SECP384R1())),
            "secp384r1",
        ),
        "empty key file": ("public_key_file", b"", "empty"),
        "blank key file": ("public_key_file", b"\n  \n", "empty"),
        "missing key file": ("public_key_file", None, "cannot read"),
        "not a key": ("public_key_file", b"hello\n", "not a PEM public key"),
    }


def test_unusable_issuer_keys_stop_the_start(tmp_path: Path) -> None:
    issuer = "https://integration.test"
    for i, (label, (config_key, content, message)) in enumerate(_bad_keys().items()):
        directory = tmp_path / f"case{i}"
        directory.mkdir()
        path = directory / "issuer-key.pem"
        if content is not None:
            path.write_bytes(content)
        cfg = OperatorConfig(
            directory, issuers=[], extra=issuer_table(issuer, key_file(config_key, path))
        )
        settings = load_settings(cfg.write())
        with pytest.raises(ConfigError) as info:
            create_app(settings)
        text = str(info.value)
        assert info.value.key == f"enrollment_issuers[0].{config_key}", label
        assert text.startswith(f"enrollment_issuers[0].{config_key}: "), label
        if label != "missing key file":  # issuers.py names only the key and path for that one
            assert repr(issuer) in text, label
        assert message in text, (label, text)


# ----------------------------------------------------------------------------- kid (catalogue J08)
async def test_a_configured_kid_and_the_thumbprint_name_every_key_form(
    make_operator: OperatorFactory, redis_url: str, tmp_path: Path
) -> None:
    """``kid`` in an issuer's table: its tokens may name the key by that kid or by the RFC 7638
    thumbprint of the configured key (computed here by joserfc from openssl's pubkey.pem, also
    for a key given as a certificate); another kid is refused."""
    rsa_dir = seed_rsa(tmp_path / "rsa")
    cert_dir = seed_certificate(tmp_path / "cert")
    ec_dir = seed_ec(tmp_path / "ec")
    forms = {
        "https://rsa-kid.test": (
            rsa_dir,
            "RSA",
            key_file("public_key_file", rsa_dir / "pubkey.pem"),
        ),
        "https://cert-kid.test": (cert_dir, "RSA", key_b64(cert_dir / "cert.b64")),
        "https://ec-kid.test": (ec_dir, "EC", key_file("public_key_file", ec_dir / "pubkey.pem")),
    }
    extra = "".join(
        issuer_table(iss, f'{line}\nkid = "seed-000:key.1"') for iss, (_, _, line) in forms.items()
    )
    async with make_operator(
        issuers=[], extra=extra, limits={"enroll_per_ip_per_hour": 1000}
    ) as op:
        for i, (iss, (directory, kty, _)) in enumerate(forms.items()):
            pubkey = (directory / "pubkey.pem").read_bytes()
            thumbprint = JWKRegistry.import_key(pubkey, kty).thumbprint()
            signer = Issuer(issuer=iss, private_key=private_key(directory / "key.pem"))
            for j, kid in enumerate(["seed-000:key.1", thumbprint]):
                device = op.device(f"device-{i}-{j}")
                token = signer.mint(f"user-{i}-{j}", header={"kid": kid})
                assert (await device.enroll(token)).token_id == f"user-{i}-{j}", (iss, kid)
            resp = await op.http.post(
                "/enroll",
                json=op.device(f"device-{i}-x").enroll_body(
                    signer.mint(f"user-{i}-x", header={"kid": "seed-000:key.2"})
                ),
            )
            assert resp.status_code == 401, (iss, resp.text)
            assert resp.json()["error"] == "invalid_enrollment_token"


@pytest.mark.parametrize(
    "kid",
    ["", "../keys/issuer.pem", "key one", "a..b", "k" * 129, "kïd", "key/1", "' OR 1=1 --"],
)
def test_a_configured_kid_must_be_a_plain_key_id(tmp_path: Path, kid: str) -> None:
    path = tmp_path / "issuer.pem"
    path.write_bytes(pem_public(ec.generate_private_key(ec.SECP256R1())))
    table = issuer_table(
        "https://integration.test", f"{key_file('public_key_file', path)}\nkid = {json.dumps(kid)}"
    )
    config = OperatorConfig(tmp_path, issuers=[], extra=table).write()
    with pytest.raises(ConfigError) as info:
        create_app(load_settings(config))  # "" is refused by the loader, the rest at start
    assert info.value.key == "enrollment_issuers[0].kid"


def test_a_kyc_issuer_takes_no_configured_kid(tmp_path: Path) -> None:
    table = issuer_table(
        "https://kyc.test",
        'format = "uqudo"\njwks_uri = "https://kyc.test/jwks.json"\nkid = "kyc-1"',
    )
    with pytest.raises(ConfigError) as info:
        load_settings(OperatorConfig(tmp_path, issuers=[], extra=table).write())
    assert info.value.key == "enrollment_issuers[0].kid"
    assert "uqudo" in str(info.value)
