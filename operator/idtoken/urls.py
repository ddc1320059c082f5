"""URL policy shared by every outbound fetch the operator makes (push services, KYC JWKS)."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit


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

# IPv6 prefixes whose last 32 bits are an IPv4 address a packet may end up at: IPv4-mapped,
# SIIT's IPv4-translated, NAT64's well-known prefix and the deprecated IPv4-compatible form.
_CARRIES_IPV4 = tuple(
    ipaddress.IPv6Network(n) for n in ("::ffff:0:0/96", "::ffff:0:0:0/96", "64:ff9b::/96", "::/96")
)
# Not public whatever `is_global` says in a given Python release: site-local (deprecated) and
# the local-use NAT64 prefix (RFC 8215), whose IPv4 part sits at a prefix-dependent place.
_NEVER_PUBLIC = tuple(ipaddress.IPv6Network(n) for n in ("fec0::/10", "64:ff9b:1::/48"))


class NotAnAddress(ValueError):
    """A host that looks numeric but is no address (``999.1``, ``1.2.3.4.5``)."""


def literal_address(host: str) -> IPAddress | None:
    """The address a URL host names literally, or None for a name.

    Brackets, an IPv6 zone and trailing dots are dropped. Besides dotted quads, the numeric
    IPv4 forms that ``inet_aton`` and so many resolvers and HTTP clients accept are read the
    same way: ``2130706433``, ``127.1``, ``0177.0.0.1`` and ``0x7f.1`` are all 127.0.0.1.
    :class:`NotAnAddress` for a host made of digits and dots that is none of these.
    """
    text = host.strip("[]").split("%", 1)[0].rstrip(".")
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(text))
    except OSError:
        pass
    if text.replace(".", "").isdigit():
        raise NotAnAddress(host)
    return None


def is_canonical_address(host: str) -> bool:
    """True unless ``host`` is an IPv4 address written other than as a plain dotted quad (or
    a numeric host that is no address): such hosts mean different things to different
    clients, so URLs the operator stores must not use them."""
    try:
        address = literal_address(host)
    except NotAnAddress:
        return False
    if address is None or address.version == 6:
        return True
    return host.strip("[]") == str(address)


@dataclass(frozen=True)
class AddressPolicy:
    """Which addresses an outbound push may connect to.

    A push endpoint is chosen by the device, so without a policy an enrolled phone could point
    the operator's POSTs at hosts inside the operator's own network (server-side request
    forgery). Public unicast addresses are always allowed. Every other address — loopback,
    private, link-local, shared (100.64.0.0/10), multicast, reserved, unspecified, site-local,
    and IPv6 forms that carry such an IPv4 address (IPv4-mapped, IPv4-translated, NAT64,
    IPv4-compatible, 6to4) — only inside one of ``allowed``: the push services an operator runs
    on its own network, and tests.
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
        if any(address in network for network in self.allowed):
            return True
        if isinstance(address, ipaddress.IPv6Address):
            carried = _carried_ipv4(address)
            if carried is not None:  # judged as the IPv4 address it leads to
                return self.allows(carried)
            if any(address in network for network in _NEVER_PUBLIC):
                return False
        return address.is_global and not address.is_multicast

    def refuses_host(self, host: str) -> bool:
        """True when ``host`` (a URL's host, brackets allowed) is refused without asking DNS:
        a literal address outside the policy, or ``localhost``. Other names are checked on the
        addresses they resolve to, when a push connects."""
        if host.lower().rstrip(".") == "localhost":
            return not self.allows("127.0.0.1")
        return self.refuses_literal(host)

    def refuses_literal(self, host: str) -> bool:
        """True when ``host`` is a literal IP address (in any form :func:`literal_address`
        reads) outside the policy, or a numeric host that is no address."""
        try:
            address = literal_address(host)
        except NotAnAddress:
            return True
        return address is not None and not self.allows(address)


def _carried_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.sixtofour is not None:
        return address.sixtofour
    if any(address in network for network in _CARRIES_IPV4):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


PUBLIC_ONLY = AddressPolicy()
"""The default policy: public addresses only."""


def redirect_uri_problem(uri: str) -> str | None:
    """Why ``uri`` cannot be a registered redirect URI, or None.

    RFC 6749 §3.1.2 and the OAuth 2.0 Security BCP (RFC 9700 §4.1): an absolute URI without a
    fragment, compared later as an exact string; ``https``, except plain ``http`` on a loopback
    host for native and development clients (RFC 8252 §7.3). User information in the authority
    is refused (it makes URIs that read as one host and go to another)."""
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return "not a valid URI"
    if not parts.hostname or not uri.isascii() or any(c.isspace() or ord(c) < 0x21 for c in uri):
        return "must be an absolute URI of printable ASCII"
    if "#" in uri:
        return "must not have a fragment"
    if "@" in parts.netloc:
        return "must not carry user information"
    if parts.scheme == "https":
        return None
    if parts.scheme == "http" and is_loopback_host(parts.hostname):
        return None
    return "must be https:// (http:// only on a loopback host: 127.0.0.1, [::1], localhost)"


def notification_endpoint_problem(uri: str, policy: AddressPolicy) -> str | None:
    """Why ``uri`` cannot be a CIBA client notification endpoint, or None: an https URI (plain
    http only on a loopback host) whose host the push address policy does not refuse
    outright (names are checked again on what they resolve to, at every delivery)."""
    problem = redirect_uri_problem(uri)
    if problem is not None:
        return problem
    host = urlsplit(uri).hostname or ""
    if not is_canonical_address(host):
        return "must name its host, or give its address in the usual form"
    if policy.refuses_host(host):
        return "must not point at a private, loopback or reserved address"
    return None
