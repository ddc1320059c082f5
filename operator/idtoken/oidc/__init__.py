"""OpenID Connect and OpenID CIBA: standard front doors onto the same login engine."""
