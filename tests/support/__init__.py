"""Helpers importable by test worker processes (PYTHONPATH includes the repository root)."""
