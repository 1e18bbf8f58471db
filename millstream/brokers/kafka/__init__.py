"""The kafka broker adapter."""
