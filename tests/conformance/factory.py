"""What a broker brings to the conformance suite: one :class:`BrokerFactory` per broker.

A factory opens connections to one broker (two connections stand for two
processes), can make a connection die without releasing anything (a crash),
and can cut it (a network drop the supervisor must recover from). Everything
else is a capability flag, Watermill style: an optional hook or value that
says what the broker can promise or what the test environment can do to it.
A test that needs a flag the factory lacks skips, saying why (:func:`needs`,
with the factory's ``lacks``): no scenario is silently left out for a broker.

The flags: ``capabilities`` (the broker's own :class:`Capabilities`, e.g. lag),
``blackhole``/``heal`` (a silent partition), ``publish_malformed`` (another
producer's bad metadata, through the raw client), ``publish_raw`` (a foreign
message with no millstream metadata), ``process_url`` (a URL other processes
and the command line open), ``group_url`` (where three member processes of one
group each get a share), ``durable_server`` (a private server with durable
storage that a test may kill -9 and restart), ``refusing`` (a server that
refuses a wrong password), ``leased`` (connections with a lease of the test's
choosing) and ``unreachable`` (a URL where nothing answers). Some flags say how
the broker tells of a takeover (``back_logged_once``, ``expired_logged_once``,
``says_back``, ``says_expired``) or what it holds for a crashed member (``crash_holds``);
``held_at`` looks at the places its layout names, with its own client.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from millstream.brokers.base import Broker, Capabilities
from tests.proxy import TcpProxy

if TYPE_CHECKING:
    from tests.brokers.server_process import ServerProcess

GROUP = "g"  # the group tests share when they need no group of their own
LEASE = 1.0  # seconds a crashed member's messages stay held, where the broker uses leases


@dataclass(frozen=True)
class Malformed:
    """A message another producer wrote with metadata ``field`` set to ``value``.

    ``payload`` is what it carries; a consumer either handles it (the field
    ignored, a default in its place) or dead-letters it with a reason naming
    the field and the value.
    """

    field: str
    value: str
    payload: bytes


@dataclass(frozen=True)
class Refusing:
    """A server that refuses the password of ``url(port)``.

    ``port`` is where the server listens (a proxy may stand in front, hence
    the URL built for any port); ``redacted`` is how an error shows the URL,
    the password hidden.
    """

    port: int
    url: Callable[[int], str]
    redacted: str


@dataclass(frozen=True)
class Unreachable:
    """A URL, with a password, to a port where nothing listens, and how an error shows it
    (the password hidden)."""

    url: str
    shown: str


@dataclass
class BrokerFactory:
    """One broker as the suite sees it: how to open, crash and cut a connection to it,
    and its capability flags (``None`` or ``False``: the broker lacks it)."""

    name: str
    open: Callable[[], Broker]
    crash: Callable[[Broker], None]
    cut: Callable[[Broker], None]
    capabilities: Capabilities
    redelivery_after_crash: float = LEASE
    opened: list[Broker] = field(default_factory=list)
    cleanup: Callable[[str], Awaitable[None]] | None = None
    """Run after the brokers are closed, with the test's topic: drop what the test left."""
    blackhole: Callable[[Broker], None] | None = None
    """Drop the connection's traffic silently (no reset) until ``heal``."""
    heal: Callable[[Broker], None] | None = None
    publish_malformed: Callable[[str], Awaitable[list[Malformed]]] | None = None
    """Publish to the topic, through the raw client, one message per kind of metadata
    the broker carries, each malformed in one way; returns what was sent."""
    publish_raw: Callable[[str, bytes], Awaitable[None]] | None = None
    """Publish a payload to the topic through the raw client, with none of millstream's
    metadata (no message id): what a producer that is not millstream writes."""
    process_url: str | None = None
    """A URL that child processes and the command line open (straight to the broker)."""
    group_url: str | None = None
    """A URL three member processes of one group consume from, each getting a share,
    with the suite's lease where the broker has leases."""
    members_join: float = 0.5
    """Seconds from every member process being ready to every one having its share."""
    survivors_keep_their_share: bool = True
    """When a member of a group dies, the others keep what they hold, so no survivor
    handles what another one handled. False for Kafka: its eager rebalance moves every
    partition, and a survivor's handlers that outlast ``drain`` (capped by the short
    rebalance timeout the tests give Tansu) have their outcomes dropped, so the new
    owner handles those messages again."""
    group_lag: Callable[[Broker, str, str], Awaitable[int]] | None = None
    """The lag of (topic, group) read without joining the group, for a broker whose
    group may take long to let a new member in after another was killed."""
    durable_server: Callable[[Path], tuple[ServerProcess, str]] | None = None
    """A private server with durable storage (not started) and the URL an app uses on it."""
    restart_recovery: float = 5.0
    """Seconds a member killed and restarted under its name may take to finish what it
    held (process start included): well under a lease, which is what it waits without."""
    back_after_cut: float = 5.0
    """Seconds a consumer may take to run again after its connection was cut."""
    refusing: Callable[[Path], AbstractContextManager[Refusing]] | None = None
    """A server that refuses a wrong password, for as long as the context lasts."""
    leased: Callable[[float], Broker] | None = None
    """Open a connection like ``open`` (crashed and cut alike), to the same broker, but
    whose members' leases last the seconds given: how long a crashed member's messages
    stay held from other members. ``None``: the broker has no leases."""
    back_within: float = 1.0
    """Seconds a member subscribing under a crashed member's name may take (its subscribe
    included) to have back what that one held: far less than the lease it waits without."""
    crash_holds: bool = True
    """What a crashed member held stays held from other members until its lease runs out."""
    back_logged_once: bool = True
    """What a member takes back under its name is one warning."""
    expired_logged_once: bool = True
    """What a member takes over once a crashed member's lease ran out is one warning."""
    says_back: Callable[[str, str], str] | None = None
    """What the broker's warning of a member taking back under its name what it held says
    besides "member <name> took <over|back> <n> message(s) of <topic>/<group>", given
    (the name, the topic); ``None``: nothing more is checked."""
    says_expired: Callable[[str, str], str] | None = None
    """What the broker's warning of a takeover after a lease says besides that common part,
    given (the name of the member taken from, the topic): the holder's name where the
    broker knows it, else why the messages came back."""
    unreachable: Callable[[int], Unreachable] | None = None
    """The broker's URL, with a password, at a loopback port where nothing listens."""
    held_at: Callable[[str, str, str], Awaitable[int]] | None = None
    """How many messages the broker's own client finds at a place ``Broker.layout`` names,
    given (the name, the topic, the group): a stream's length, a queue's messages, a topic's
    records, the group's rows of a table; 0 where nothing is. ``None``: the broker keeps
    nothing a client outside the process can look at."""
    lacks: dict[str, str] = field(default_factory=dict)
    """Why the broker lacks a capability flag, by the flag's name: the skip says so."""

    async def connect(self) -> Broker:
        return await self._connected(self.open())

    async def connect_leased(self, seconds: float) -> Broker:
        """A connection whose members hold what they fetch for ``seconds`` (``leased``), or
        an ordinary one where the broker has no leases."""
        return await self._connected(self.open() if self.leased is None else self.leased(seconds))

    async def _connected(self, broker: Broker) -> Broker:
        await broker.connect()
        self.opened.append(broker)
        return broker


def needs(brokers: BrokerFactory, flag: str, what: str) -> None:
    """Skip the test when the broker lacks capability ``flag``, saying it cannot take
    ``what`` and why (its factory's ``lacks``)."""
    owner = brokers.capabilities if hasattr(brokers.capabilities, flag) else brokers
    if getattr(owner, flag) in (None, False):
        why = brokers.lacks.get(flag, f"its factory has no {flag!r}")
        pytest.skip(f"the {brokers.name} broker cannot take {what}: {why}")


def group_of(topic: str, name: str = "g") -> str:
    """A group of the test's own: a broker may keep a group's members across topics (Kafka),
    and a member killed by another test must not hold up this one's join."""
    return f"{topic}-{name}"


def with_query(url: str, query: str) -> str:
    """``url`` with ``query`` added to what it has."""
    return f"{url}{'&' if '?' in url else '?'}{query}"


def proxied(
    name: str,
    address: tuple[str, int],
    make: Callable[[TcpProxy], Broker],
    drop: Callable[[str], Awaitable[None]],
    capabilities: Capabilities,
    *,
    redelivery_after_crash: float = LEASE,
    leased: Callable[[TcpProxy, float], Broker] | None = None,
) -> BrokerFactory:
    """A factory whose every connection goes through a TCP proxy of its own to ``address``.

    ``make(proxy)`` builds a broker that connects through ``proxy``;
    ``leased(proxy, seconds)``, one whose leases last ``seconds``.
    So one connection can be cut (a network drop), crashed (cut and never
    let back in) or blackholed while the others carry on. Cleanup closes the
    proxies, then ``drop(topic)`` removes what the test left on the broker.
    """
    proxies: dict[int, TcpProxy] = {}

    def through(build: Callable[[TcpProxy], Broker]) -> Broker:
        proxy = TcpProxy(*address).start()
        broker = build(proxy)
        proxies[id(broker)] = proxy
        return broker

    def open_() -> Broker:
        return through(make)

    def open_leased(seconds: float) -> Broker:
        assert leased is not None
        return through(lambda proxy: leased(proxy, seconds))

    def crash(broker: Broker) -> None:
        proxies[id(broker)].pause()
        proxies[id(broker)].cut()

    def cut(broker: Broker) -> None:
        proxies[id(broker)].cut()

    def blackhole(broker: Broker) -> None:
        proxies[id(broker)].blackhole()

    def heal(broker: Broker) -> None:
        proxies[id(broker)].heal()

    async def cleanup(topic: str) -> None:
        for proxy in proxies.values():
            proxy.close()
        await drop(topic)

    return BrokerFactory(
        name,
        open_,
        crash,
        cut,
        capabilities,
        redelivery_after_crash,
        cleanup=cleanup,
        blackhole=blackhole,
        heal=heal,
        leased=None if leased is None else open_leased,
    )
