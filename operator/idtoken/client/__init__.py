"""Reference clients: a relying party and a device (phone app), written against the wire
contract only. They are what the tests and the demo use, and a model for integrators."""

from idtoken.client.device import Device, Enrollment
from idtoken.client.relying_party import Initiation, JwksCache, RelyingParty, ResultError

__all__ = ["Device", "Enrollment", "Initiation", "JwksCache", "RelyingParty", "ResultError"]
