"""The demo: a generated configuration (and, when enabled, demo pages)."""
