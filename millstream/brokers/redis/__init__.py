"""The Redis Streams adapter: ``redis://`` and ``rediss://``, through redis-py's asyncio client.

A topic is a stream and a group a consumer group on it; each group has a
retry stream, a sorted set of retries waiting for their time and a
dead-letter stream of its own. An ack is an ``XACK``; retries, dead letters,
releases and takeovers are Lua scripts that change several keys in one
atomic round trip. The adapter is :class:`millstream.brokers.redis.broker.RedisBroker`.
"""
