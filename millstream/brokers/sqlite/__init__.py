"""The SQLite adapter: ``sqlite:///path``, one file shared by the processes of one machine.

A topic is a set of message rows and a group a delivery row per message.
Fetching leases delivery rows to a member (``IMMEDIATE`` transactions, so no
two members lease the same row); an ack deletes a row, a retry reschedules
it, a dead letter marks it dead. sqlite3 runs on one thread per broker. The
adapter is :class:`millstream.brokers.sqlite.broker.SqliteBroker`.
"""
