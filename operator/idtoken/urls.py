"""URL policy shared by every outbound fetch the operator makes (push services, KYC JWKS)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and literal addresses in 127.0.0.0/8 or ``::1`` (brackets
    allowed). Plain ``http://`` is accepted only for such hosts: tests and development."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class AddressPolicy:
    """Which addresses an outbound push may connect to.

    A push endpoint is chosen by the device, so without a policy an enrolled phone could point
    the operator's POSTs at hosts inside the operator's own network (server-side request
    forgery). Public unicast addresses are always allowed. Every other address — loopback,
    private, link-local, shared (100.64.0.0/10), multicast, reserved, unspecified, and IPv6
    forms that embed such an IPv4 address — only inside one of ``allowed``: the push services
    an operator runs on its own network, and tests.
    """

    allowed: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, networks: Iterable[str]) -> AddressPolicy:
        """From CIDR strings (``"10.8.0.0/16"``, ``"::1/128"``; a bare address is a /32 or
        /128). :class:`ValueError` names the first entry that is not a network."""
        parsed = []
        for text in networks:
            try:
                parsed.append(ipaddress.ip_network(text, strict=False))
            except ValueError:
                raise ValueError(f"{text!r} is not an IP network") from None
        return cls(tuple(parsed))

    def allows(self, address: str | IPAddress) -> bool:
        """Whether a connection to ``address`` is allowed. A string that is not an IP
        address is refused."""
        if isinstance(address, str):
            try:
                address = ipaddress.ip_address(address.split("%", 1)[0])
            except ValueError:
                return False
        if isinstance(address, ipaddress.IPv6Address):
            embedded = address.ipv4_mapped or address.sixtofour
            if embedded is not None:  # judged as the IPv4 address it carries
                return self.allows(embedded)
        if any(address in network for network in self.allowed):
            return True
        return address.is_global and not address.is_multicast

    def refuses_host(self, host: str) -> bool:
        """True when ``host`` (a URL's host, brackets allowed) is refused without asking DNS:
        a literal address outside the policy, or ``localhost``. Other names are checked on the
        addresses they resolve to, when a push connects."""
        if host.lower().rstrip(".") == "localhost":
            return not self.allows("127.0.0.1")
        return self.refuses_literal(host)

    def refuses_literal(self, host: str) -> bool:
        """True when ``host`` is a literal IP address (brackets allowed) outside the policy."""
        try:
            address = ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
        except ValueError:
            return False
        return not self.allows(address)


PUBLIC_ONLY = AddressPolicy()
"""The default policy: public addresses only."""
