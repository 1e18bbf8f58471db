"""The memory broker adapter."""
