"""The memory adapter: ``memory://``, the whole contract in process, for logic tests.

A :class:`~millstream.brokers.memory.hub.MemoryHub` holds every topic as a
log with a cursor per group; fetched messages are leased to their member,
and an expired lease or a cut connection puts them back, counted. Each
:class:`~millstream.brokers.memory.broker.MemoryBroker` is one client of a
hub, so a test can run two "processes" on one.
"""
