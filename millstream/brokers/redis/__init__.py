"""The redis broker adapter."""
