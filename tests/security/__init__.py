"""Attacks, each written as the attacker sends it, and the safe outcome."""
