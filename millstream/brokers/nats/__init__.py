"""The NATS JetStream adapter (nats-py): ``nats://host:4222``.

A topic is a subject stored in a stream of its own; a group is a durable
pull consumer on it, each subscription one member pulling in batches. A
retry is a ``nak`` with its delay, a dead letter a copy in the group's
dead-letter stream; released and replayed messages reach the group alone
through a private subject. The entry point is ``NatsBroker`` in
``broker.py``, which :func:`millstream.brokers.connect` loads on demand.
"""
