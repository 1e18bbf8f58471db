"""Metrics, tracing, logs and the health model."""
