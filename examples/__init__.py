"""Runnable example services built on millstream."""
