"""The nats broker adapter."""
