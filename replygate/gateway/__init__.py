"""Inbound SMTP gateway and pipe ingress: refuse early, accept durably."""
