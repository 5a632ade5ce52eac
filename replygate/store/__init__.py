"""Persistence: models, sessions, migrations, the inbound queue and the outbox."""
