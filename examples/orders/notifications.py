"""Notifications: what the customer is told each time an order changes status."""

from __future__ import annotations

from examples.orders import store as orders
from examples.orders.models import StatusChanged
from millstream import Router, Transaction

__all__ = ["router"]

router = Router()
"""Needs nothing of one service, so one router serves every service that includes it."""


@router.consumer("orders.status-changed", group="notifications", key="order_id", idempotent=True)
async def notifications(change: StatusChanged, tx: Transaction) -> None:
    await orders.record_notification(tx, change)
