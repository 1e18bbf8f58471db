"""``Broker.layout`` names the places each broker really uses: looked at with its own client.

The AsyncAPI document lists these places as channels, so a name that is off
by a character sends a reader to an empty queue. Each test puts a message
somewhere (a dead letter, a retry, a delayed publish) and asks the broker's
own client (``held_at``) how many messages the place the layout names holds.
"""

from __future__ import annotations

import time

import pytest

from millstream import OutgoingMessage
from tests.conformance.factory import GROUP, BrokerFactory, needs
from tests.conformance.test_contract import fetch_n


async def held(brokers: BrokerFactory, names: list[str], topic: str) -> dict[str, int]:
    assert brokers.held_at is not None
    return {name: await brokers.held_at(name, topic, GROUP) for name in names}


async def test_the_layout_is_named_without_a_connection_and_complete(
    brokers: BrokerFactory, topic: str
) -> None:
    broker = brokers.open()  # never connected: naming needs no broker
    brokers.opened.append(broker)
    layout = broker.layout(topic, GROUP)
    assert broker.layout(topic, GROUP) == layout
    for place in layout.places:
        assert place.kind and place.holds, place
        assert place.names() and all("{" not in name for name in place.names()), place
    headers = [name for name, _ in layout.dead_letter_headers]
    assert len(set(headers)) == len(headers)
    assert all(meaning for _, meaning in layout.dead_letter_headers)
    # A broker that keeps dead letters where a client can look names that place and
    # what a letter carries there; the memory broker keeps them in process, unnamed.
    outside = brokers.held_at is not None
    assert (layout.dead_letters is not None) is outside
    assert bool(headers) is outside


async def test_a_dead_letter_is_where_the_layout_says(brokers: BrokerFactory, topic: str) -> None:
    needs(brokers, "held_at", "a look at where its dead letters are kept")
    broker = await brokers.connect()
    layout = broker.layout(topic, GROUP)
    assert layout.dead_letters is not None
    names = layout.dead_letters.names()
    sub = await broker.subscribe(topic, GROUP, prefetch=4)
    await broker.publish(topic, [OutgoingMessage(b'{"poison": true}')])
    [message] = await fetch_n(sub, 1)

    await sub.settle([], [], [(message, "FatalError: poison")])

    assert sum((await held(brokers, names, topic)).values()) == 1
    assert await (await broker.dead_letters(topic, GROUP)).count() == 1
    await sub.close()


async def test_a_retry_waits_where_the_layout_says(brokers: BrokerFactory, topic: str) -> None:
    needs(brokers, "held_at", "a look at where its retries wait")
    broker = await brokers.connect()
    layout = broker.layout(topic, GROUP)
    if not layout.retry:
        pytest.skip(f"the {brokers.name} broker retries in place: no retry place to look at")
    names = [name for place in layout.retry for name in place.names()]
    sub = await broker.subscribe(topic, GROUP, prefetch=4)
    await broker.publish(topic, [OutgoingMessage(b'{"again": true}')])
    [message] = await fetch_n(sub, 1)

    await sub.settle([], [(message, 60.0)], [])

    found = await held(brokers, names, topic)
    assert sum(found.values()) == 1, {name: n for name, n in found.items() if n}
    await sub.close()


async def test_a_delayed_publish_waits_where_the_layout_says(
    brokers: BrokerFactory, topic: str
) -> None:
    needs(brokers, "held_at", "a look at where its delayed publishes wait")
    broker = await brokers.connect()
    layout = broker.layout(topic, GROUP)
    if layout.delay is None:
        pytest.skip(f"the {brokers.name} broker holds delayed publishes in the topic itself")

    await broker.publish(topic, [OutgoingMessage(b"{}", deliver_at=time.time() + 60)])

    assert sum((await held(brokers, layout.delay.names(), topic)).values()) == 1
