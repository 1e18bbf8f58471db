"""Observability: OpenTelemetry tracing, structured logs, Prometheus metrics, the health model.

Each concern is its own module, imported where it is used:
:mod:`~millstream.observability.tracing` (``instrument``),
:mod:`~millstream.observability.logs` (``configure_logging``),
:mod:`~millstream.observability.metrics` and
:mod:`~millstream.observability.health`.
"""
