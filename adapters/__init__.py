"""Adapters: one module per technology and role, built only by gateway.bootstrap."""
