"""Settling on NATS JetStream: a batch of acknowledgements in one round trip.

One publish per outcome on the delivery's acknowledgement subject (``+ACK``,
``-NAK {"delay": ns}``, ``+TERM``), with only the last one sent as a
request. The server applies a consumer's acknowledgements in the order they
arrive, so its reply means the whole batch is applied: one round trip per
batch, and a lag read right after sees it.
"""

from __future__ import annotations

from collections.abc import Sequence

from nats import errors as nats_errors

from millstream.brokers.nats.connection import REQUEST_TIMEOUT, Connection, translated
from millstream.message import Message

__all__ = ["ACK", "PROGRESS", "TERM", "acknowledge", "acknowledgements", "nak"]

ACK = b"+ACK"
TERM = b"+TERM"
PROGRESS = b"+WPI"  # work in progress: the lease starts over


def nak(delay: float) -> bytes:
    """A ``-NAK``: deliver again after ``delay`` seconds."""
    ns = max(0, round(delay * 1e9))
    return b'-NAK {"delay": %d}' % ns if ns else b"-NAK"


def acknowledgements(
    held: dict[str, Message],
    acks: Sequence[Message],
    requeues: Sequence[tuple[Message, float]],
    deads: Sequence[tuple[Message, str]],
) -> tuple[list[tuple[str, bytes]], list[str]]:
    """The (subject, acknowledgement) of each outcome whose delivery is in ``held``, taken
    out of it, and the subjects of those retried. Outcomes of other deliveries are skipped."""
    found: list[tuple[str, bytes]] = []
    for m, _ in deads:
        if held.pop(m.receipt, None) is not None:
            found.append((m.receipt, TERM))
    retried: list[str] = []
    for m, delay in requeues:
        if held.pop(m.receipt, None) is not None:
            found.append((m.receipt, nak(delay)))
            retried.append(m.receipt)
    for m in acks:
        if held.pop(m.receipt, None) is not None:
            found.append((m.receipt, ACK))
    return found, retried


async def acknowledge(
    connection: Connection, commands: Sequence[tuple[str, bytes]], *mine: str
) -> bool:
    """Publish (subject, acknowledgement) ``commands``, the last as a request, and wait for
    its reply: then all are applied. ``False`` if no consumer answers (it is gone)."""
    if not commands:
        return True
    client = connection.client
    with translated(connection.url):
        for subject, payload in commands[:-1]:
            await client.publish(subject, payload)
    last_subject, last_payload = commands[-1]
    if last_payload == TERM:
        # The server answers no request to +TERM; +WPI after it is answered, and
        # since the consumer takes its acknowledgements in order, it fences the batch.
        with translated(connection.url):
            await client.publish(last_subject, TERM)
        last_payload = PROGRESS
    return await connection.guard(_fence(connection, last_subject, last_payload), *mine)


async def _fence(connection: Connection, subject: str, payload: bytes) -> bool:
    try:
        await connection.client.request(subject, payload, timeout=REQUEST_TIMEOUT)
    except nats_errors.NoRespondersError:
        return False
    return True
