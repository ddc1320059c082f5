"""Write a demo configuration: two services, a demo integration issuer and its private key.

Only for trying the operator out: the demo issuer's private key sits next to the configuration
so that the demo can mint enrollment tokens. Production configurations never enable ``[demo]``.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

DEMO_ISSUER_SUFFIX = "/demo/issuer"

_TEMPLATE = """\
# Demo configuration written by `idtoken-operator demo init`. Not for production.
issuer = "{issuer}"
keys_dir = "keys"

[push]
vapid_private_key_file = "vapid.pem"
vapid_subject = "mailto:demo@example.com"

[[services]]
id = "demo-shop"
name = "Demo Shop"
allowed_scopes = ["identity:name", "identity:age_over_18", "identity:date_of_birth",
                  "identity:nationality", "identity:email", "identity:trust_level",
                  "identity:basic", "identity:age_verification", "identity:name_initial",
                  "identity:age_range", "identity:is_eu_citizen"]
default_scopes = ["identity:name"]
otp_mode = "display"
session_ttl = 120

[[services]]
id = "demo-typed"
name = "Demo Bank"
allowed_scopes = ["identity:name", "identity:age_over_18", "identity:trust_level", "identity:basic"]
default_scopes = ["identity:basic"]
otp_mode = "typed"
session_ttl = 120

[limits]
enroll_per_ip_per_hour = 100

[[enrollment_issuers]]
issuer = "{issuer}{suffix}"
audience = "idtoken-operator"
public_key_file = "demo-issuer.pub.pem"
trust_level = 1

[demo]
enabled = true
issuer_private_key_file = "demo-issuer.key.pem"
"""


def write_demo_config(directory: Path, issuer: str, *, name: str = "demo.toml") -> Path:
    """Create ``directory/name`` and the demo issuer's key pair; returns the config path."""
    directory.mkdir(parents=True, exist_ok=True)
    private_path = directory / "demo-issuer.key.pem"
    if not private_path.exists():
        key = ec.generate_private_key(ec.SECP256R1())
        fd = os.open(private_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
        (directory / "demo-issuer.pub.pem").write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
    path = directory / name
    path.write_text(_TEMPLATE.format(issuer=issuer.rstrip("/"), suffix=DEMO_ISSUER_SUFFIX))
    return path
