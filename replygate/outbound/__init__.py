"""Outbound notifications: composing them (pure) and delivering the outbox."""
