"""Shared fixtures live in tests/support and in each tier's own conftest.py."""
