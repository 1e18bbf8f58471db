"""The Kafka adapter (aiokafka): ``kafka://host:9092``.

A topic is a Kafka topic and a group a consumer group whose members own
partitions; keys pick partitions, so one key is handled in order. Retries
go to the group's ``<topic>.retry.<group>`` with their due time, dead
letters to ``<topic>.dlq``; settling commits, per partition, the offset
below which everything is done. The entry point is ``KafkaBroker`` in
``broker.py``, which :func:`millstream.brokers.connect` loads on demand.
"""
