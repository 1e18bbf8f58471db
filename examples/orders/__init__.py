"""The order service: ``millstream run examples.orders:app``; ``make demo`` adds payments.

- ``POST /api/v1/orders`` writes an order and its ``orders.created`` event
  in one transaction (the event goes out through the outbox);
- the ``payments`` consumer (``payments.py``, a router) moves orders
  through their states and publishes ``orders.status-changed`` (the
  change its handler returns, declared with ``publishes=``);
- the ``notifications`` consumer (``notifications.py``, a router) writes a
  customer notification per change;
- ``GET /api/v1/orders/{id}``, ``GET /api/v1/orders?ids=a,b,c`` and
  ``GET /api/v1/orders/{id}/notifications`` read, through a cache
  invalidated on every instance.
"""

import os

from examples.orders.service import OrderService, build

# Files of its own unless the environment names others, so that it never shares a
# store (and an ``orders`` table of another shape) with the README's examples.
_OWN_FILES = {
    "broker_url": "sqlite:///./.millstream/orders/broker.db",
    "store_url": "sqlite:///./.millstream/orders/state.db",
}
service = build(
    **{k: v for k, v in _OWN_FILES.items() if f"MILLSTREAM_{k.upper()}" not in os.environ}
)
app = service.app
ms = service.ms

__all__ = ["OrderService", "app", "build", "ms", "service"]
