"""IDToken Operator: passwordless out-of-band authentication server."""

__version__ = "0.1.0"
