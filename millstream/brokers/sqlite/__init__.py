"""The sqlite broker adapter."""
