"""URL policy shared by every outbound fetch the operator makes (push services, KYC JWKS)."""

from __future__ import annotations

import ipaddress


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and literal addresses in 127.0.0.0/8 or ``::1`` (brackets
    allowed). Plain ``http://`` is accepted only for such hosts: tests and development."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
