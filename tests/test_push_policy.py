"""Push endpoints are chosen by the phone, so they must not reach into the operator's network.

Public addresses are always allowed; loopback, private, link-local, shared, multicast,
reserved and unspecified addresses only inside ``push.allow_private_networks``. Literal
addresses are refused when the subscription arrives (400, nothing stored) and again before a
push; names are checked on the addresses they resolve to, on the connection itself.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from conftest import OperatorFactory
from idtoken.client import Device
from idtoken.client.device import OperatorError
from idtoken.clock import SystemClock
from idtoken.push.base import PushOutcome, PushResult, PushSubscription
from idtoken.push.webpush import WebPushNotifier
from idtoken.settings import ConfigError, load_settings
from idtoken.urls import (
    PUBLIC_ONLY,
    AddressPolicy,
    NotAnAddress,
    is_canonical_address,
    literal_address,
)
from pushreceiver import PushReceiver
from support import OperatorConfig

SUBJECT = "mailto:ops@example.com"
LOOPBACK = AddressPolicy.parse(["127.0.0.0/8", "::1/128"])
PAYLOAD = {"type": "auth_request", "sessionId": "s-1"}

REFUSED = [
    "127.0.0.1",
    "127.255.0.9",
    "::1",
    "10.0.0.7",
    "172.16.5.4",
    "192.168.1.1",
    "169.254.169.254",  # cloud metadata services
    "100.64.0.1",  # shared address space (carrier-grade NAT)
    "0.0.0.0",
    "224.0.0.1",
    "255.255.255.255",
    "fe80::1",
    "fe80::1%eth0",
    "fc00::1",
    "ff02::1",
    "::",
    "::ffff:127.0.0.1",  # IPv4-mapped loopback
    "::ffff:10.0.0.7",
    "2002:7f00:1::",  # 6to4 around 127.0.0.1
    "::7f00:1",  # IPv4-compatible (deprecated) 127.0.0.1
    "::a00:7",  # IPv4-compatible 10.0.0.7
    "::ffff:0:7f00:1",  # SIIT's IPv4-translated 127.0.0.1
    "64:ff9b::a9fe:a9fe",  # NAT64 to 169.254.169.254
    "64:ff9b:1::a00:7",  # local-use NAT64
    "fec0::1",  # site-local
    "not-an-address",
]
PUBLIC = [
    "8.8.8.8",
    "142.250.74.110",
    "2606:4700:4700::1111",
    "::ffff:8.8.8.8",
    "64:ff9b::808:808",  # NAT64 to a public address: how IPv6-only networks reach IPv4
]


@pytest.mark.parametrize("address", REFUSED)
def test_the_default_policy_refuses_every_non_public_address(address: str) -> None:
    assert not PUBLIC_ONLY.allows(address)


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_are_allowed(address: str) -> None:
    assert PUBLIC_ONLY.allows(address)
    assert AddressPolicy.parse(["10.0.0.0/8"]).allows(address)


def test_listed_networks_are_allowed_and_nothing_else() -> None:
    policy = AddressPolicy.parse(["10.8.0.0/16", "::1", "127.0.0.1"])
    assert policy.allows("10.8.200.1")
    assert not policy.allows("10.9.0.1")
    assert policy.allows("::1")
    assert policy.allows("127.0.0.1")
    assert policy.allows("::ffff:127.0.0.1")  # judged as the IPv4 address it carries
    assert not policy.allows("127.0.0.2")
    assert not policy.allows("169.254.169.254")


def test_hosts_decided_without_dns() -> None:
    assert PUBLIC_ONLY.refuses_host("127.0.0.1")
    assert PUBLIC_ONLY.refuses_host("[::1]")
    assert PUBLIC_ONLY.refuses_host("localhost")
    assert PUBLIC_ONLY.refuses_host("LOCALHOST.")
    assert not PUBLIC_ONLY.refuses_host("8.8.8.8")
    # Names are left to the resolver, which checks what they resolve to.
    assert not PUBLIC_ONLY.refuses_host("fcm.googleapis.com")
    assert not LOOPBACK.refuses_host("localhost")
    assert not LOOPBACK.refuses_host("127.0.0.1")
    # Before a push, only literal addresses are decided up front: they never reach a resolver.
    assert PUBLIC_ONLY.refuses_literal("[::1]")
    assert PUBLIC_ONLY.refuses_literal("10.0.0.7")
    assert not PUBLIC_ONLY.refuses_literal("localhost")
    assert not PUBLIC_ONLY.refuses_literal("8.8.8.8")


@pytest.mark.parametrize("host", ["2130706433", "127.1", "0177.0.0.1", "0x7f.1", "127.0.0.1."])
def test_numeric_ipv4_forms_are_read_as_the_address_a_resolver_would_use(host: str) -> None:
    assert literal_address(host) == ipaddress.IPv4Address("127.0.0.1")
    assert PUBLIC_ONLY.refuses_literal(host)
    assert PUBLIC_ONLY.refuses_host(host)
    assert not is_canonical_address(host)  # and a stored endpoint may not use them


@pytest.mark.parametrize("host", ["999.1", "1.2.3.4.5", "4294967296"])
def test_a_numeric_host_that_is_no_address_is_refused(host: str) -> None:
    with pytest.raises(NotAnAddress):
        literal_address(host)
    assert PUBLIC_ONLY.refuses_literal(host)
    assert LOOPBACK.refuses_literal(host)
    assert not is_canonical_address(host)


def test_names_and_plain_addresses_are_canonical() -> None:
    for host in ("push.example.com", "cafe.de", "8.8.8.8", "[2606:4700::1]", "localhost"):
        assert is_canonical_address(host), host
    assert literal_address("cafe.de") is None


@pytest.mark.parametrize("bad", ["10.0.0.0/33", "example.com", "", "10.0.0.300"])
def test_a_network_that_is_not_one_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="is not an IP network"):
        AddressPolicy.parse([bad])


# ------------------------------------------------------------------------ configuration
def _config(tmp_path: Path, networks: Any) -> Path:
    cfg = OperatorConfig(tmp_path / "op")
    cfg.push_private_networks = networks
    return cfg.write()


def test_allow_private_networks_is_read_from_the_push_table(tmp_path: Path) -> None:
    settings = load_settings(_config(tmp_path, ["10.8.0.0/16"]))
    assert settings.push.endpoint_policy.allows("10.8.0.9")
    assert not settings.push.endpoint_policy.allows("127.0.0.1")


def test_without_allow_private_networks_only_public_addresses(tmp_path: Path) -> None:
    settings = load_settings(_config(tmp_path, []))
    assert settings.push.endpoint_policy == PUBLIC_ONLY


@pytest.mark.parametrize("value", [["10.0.0.0/8", "intranet"], "10.0.0.0/8", [7]])
def test_a_bad_allow_private_networks_stops_start_up(tmp_path: Path, value: Any) -> None:
    with pytest.raises(ConfigError, match=r"push\.allow_private_networks"):
        load_settings(_config(tmp_path, value))


# ------------------------------------------------------------------------ the notifier
@pytest.fixture
async def receiver() -> AsyncIterator[PushReceiver]:
    async with PushReceiver() as push_service:
        yield push_service


async def _send(policy: AddressPolicy, subscription: PushSubscription) -> PushResult:
    notifier = WebPushNotifier(
        ec.generate_private_key(ec.SECP256R1()),
        SUBJECT,
        clock=SystemClock(),
        endpoint_policy=policy,
    )
    try:
        clock = SystemClock()
        result = await notifier.send(
            subscription, PAYLOAD, ttl=60, topic="t", deadline=clock.now() + 30
        )
    finally:
        await notifier.aclose()
    return result


def _on_localhost(subscription: PushSubscription) -> PushSubscription:
    """The same subscription, its endpoint named ``localhost`` instead of ``127.0.0.1``."""
    return PushSubscription(
        endpoint=subscription.endpoint.replace("127.0.0.1", "localhost", 1),
        p256dh=subscription.p256dh,
        auth=subscription.auth,
    )


async def test_a_literal_private_endpoint_gets_no_request(
    receiver: PushReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    subscription, _ = receiver.new_subscription()
    with caplog.at_level(logging.WARNING, logger="idtoken.push"):
        result = await _send(PUBLIC_ONLY, subscription)
    assert (result.outcome, result.attempts, result.status) == (PushOutcome.FAILED, 0, None)
    assert receiver.requests == []
    refused = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert refused and all("/push/" not in m for m in refused)  # the origin only, no path


async def test_a_name_that_resolves_to_loopback_gets_no_request_and_no_retry(
    receiver: PushReceiver,
) -> None:
    subscription, _ = receiver.new_subscription()
    notifier = WebPushNotifier(
        ec.generate_private_key(ec.SECP256R1()), SUBJECT, clock=SystemClock(), max_attempts=4
    )
    try:
        clock = SystemClock()
        result = await notifier.send(
            _on_localhost(subscription), PAYLOAD, ttl=60, topic="t", deadline=clock.now() + 30
        )
    finally:
        await notifier.aclose()
    assert result.outcome is PushOutcome.FAILED
    assert result.attempts == 1  # refused on the connection, not retried as a network error
    assert result.status is None
    assert receiver.requests == []


async def test_listed_networks_are_reached_by_address_and_by_name(receiver: PushReceiver) -> None:
    by_address, _ = receiver.new_subscription()
    assert (await _send(LOOPBACK, by_address)).outcome is PushOutcome.SENT
    by_name, _ = receiver.new_subscription()
    result = await _send(LOOPBACK, _on_localhost(by_name))
    assert result.status is not None  # an answer came back: the connection was allowed
    assert len(receiver.requests) == 2


# ------------------------------------------------------------------------ the API
def _subscription_json(endpoint: str, receiver: PushReceiver) -> dict[str, Any]:
    template, _ = receiver.new_subscription()
    return {"endpoint": endpoint, "keys": {"p256dh": template.p256dh, "auth": template.auth}}


@pytest.mark.parametrize(
    "endpoint",
    [
        "https://10.0.0.7/push/x",
        "https://169.254.169.254/latest/meta-data",
        "https://[::1]:8443/push/x",
        "https://[::ffff:127.0.0.1]/push/x",
        "http://localhost:9/push/x",
        "http://127.0.0.1:6379/",
        "https://2130706433/push/x",  # 127.0.0.1 as one number
        "https://0x7f.1/push/x",
        "https://[64:ff9b::a9fe:a9fe]/latest",  # NAT64 to the metadata service
        "https://[::7f00:1]/push/x",
    ],
)
async def test_enrollment_with_a_private_endpoint_is_refused_and_changes_nothing(
    make_operator: OperatorFactory, redis_url: str, receiver: PushReceiver, endpoint: str
) -> None:
    async with make_operator(push_private_networks=[]) as op:
        device = op.device()
        token = op.issuer.mint("user-ssrf")
        with pytest.raises(OperatorError) as refused:
            await device.enroll(token, push_subscription=_subscription_json(endpoint, receiver))
        assert refused.value.status == 400
        assert refused.value.error == "invalid_request"
        assert refused.value.description.startswith("pushSubscription.endpoint must")
        # Nothing was consumed or stored: the same enrollment token still works.
        public = _subscription_json("https://push.example.com/push/abc", receiver)
        await device.enroll(token, push_subscription=public)
        assert device.enrollment is not None


async def test_a_private_replacement_subscription_is_refused_and_the_old_one_kept(
    make_operator: OperatorFactory, redis_url: str, receiver: PushReceiver
) -> None:
    async with make_operator(push_private_networks=["127.0.0.0/8"]) as op:
        disco = (await op.http.get("/.well-known/openid-configuration")).json()
        subscription, handle = receiver.new_subscription(
            application_server_key=disco["push_vapid_public_key"]
        )
        device: Device = op.device()
        await device.enroll(op.issuer.mint("user-ssrf2"), push_subscription=subscription.to_json())
        for endpoint in ("https://[::1]/push/x", "https://192.168.0.1/push/x"):
            with pytest.raises(OperatorError) as refused:
                await device.replace_subscription(_subscription_json(endpoint, receiver))
            assert refused.value.status == 400
            assert refused.value.description == (
                "subscription.endpoint must not point at a private, loopback or reserved address"
            )
        # The next push still goes to the subscription enrolled first.
        await op.rp().initiate("user-ssrf2", ["identity:name"])
        await receiver.wait_for_requests(1)
        assert len(handle.requests) == 1


async def test_subscription_errors_name_the_member_they_came_in(
    make_operator: OperatorFactory, redis_url: str, receiver: PushReceiver
) -> None:
    async with make_operator() as op:
        device = op.device()
        with pytest.raises(OperatorError) as refused:
            await device.enroll(
                op.issuer.mint("user-msg"),
                push_subscription=_subscription_json("ftp://push.example.com/x", receiver),
            )
        assert refused.value.description == "pushSubscription.endpoint must be an https URL"
        await device.enroll(op.issuer.mint("user-msg"))
        with pytest.raises(OperatorError) as replaced:
            await device.replace_subscription({"endpoint": "https://push.example.com/x"})
        assert replaced.value.description == "subscription.keys must be an object"
