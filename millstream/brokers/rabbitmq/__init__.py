"""The RabbitMQ adapter: ``amqp://`` and ``amqps://``, through aiormq.

A topic is a fanout exchange and a group a durable queue bound to it
(quorum unless ``?queue_type=classic``). Publishing waits for publisher
confirms; an ack is a ``basic.ack`` (``multiple`` over settled runs); a
retry is a confirmed copy in a TTL queue per delay step that dead-letters
back to the group's queue; a dead letter is a confirmed copy in the group's
``.dlq`` queue. The adapter is :class:`millstream.brokers.rabbitmq.broker.RabbitMqBroker`.
"""
