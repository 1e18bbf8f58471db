"""A member back under its name after a crash: its predecessor is removed from the group at once.

A process that dies without leaving stays a member of its groups until its
session times out; only then does a rebalance hand its partitions on, so a
restarted process would wait the session timeout plus a rebalance for what
it held. A member with a stable name (the runtime's ``member``) carries the
name in its client id, and Kafka makes member ids ``<client id>-<uuid>``: the
group's member list (DescribeGroups) shows the predecessor under the same
name, and a LeaveGroup in its name removes it, so the join that follows
hands its partitions on at once. The contract promises that no two live
members share a name, so a member under this name is a dead one (or this
process's own, whose connection was lost).

Kafka's static membership (``group.instance.id``) is the textbook way, but
Tansu keeps rebalancing a group of two or more static members (every
SyncGroup is followed by REBALANCE_IN_PROGRESS), and commits fail in
between: docs/brokers/kafka.md.
"""

from __future__ import annotations

import itertools
import os
import re
import time
from collections.abc import Callable
from typing import Any

from aiokafka import errors as kafka_errors
from aiokafka.client import ConnectionGroup
from aiokafka.conn import CloseReason
from aiokafka.protocol.admin import DescribeGroupsRequest
from aiokafka.protocol.group import JoinGroupRequest, LeaveGroupRequest, SyncGroupRequest

__all__ = ["client_id", "remove_predecessors", "wait_for_rebalances", "watch_connections"]

_GROUP = 0  # FindCoordinator key type of a consumer group
_UUID = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_COUNT = itertools.count()


def client_id(member: str | None) -> str:
    """The client id of a new member: starting with the time, so that the range
    assignor (lowest member ids first) lets older members keep their partitions,
    then the member's name, or this process and a counter without one."""
    name = member if member is not None else f"{os.getpid()}-{next(_COUNT)}"
    return f"millstream-{time.time_ns():020d}-{name}"


async def remove_predecessors(client: Any, group: str, member: str) -> list[str]:
    """Remove from ``group`` every member that joined under the name ``member``;
    returns their member ids. ``client`` is a connected aiokafka client."""
    pattern = re.compile(rf"millstream-\d{{20}}-{re.escape(member)}-{_UUID}")
    node = await client.coordinator_lookup(_GROUP, group)
    described = await client.send(
        node, DescribeGroupsRequest([group]), group=ConnectionGroup.COORDINATION
    )
    gone = [
        found[0]
        for entry in described.groups
        if entry[1] == group
        for found in entry[5]  # members: (member id, client id, ...)
        if pattern.fullmatch(found[0])
    ]
    for member_id in gone:
        answer = await client.send(
            node, LeaveGroupRequest(group, member_id), group=ConnectionGroup.COORDINATION
        )
        code = answer.error_code
        if code and kafka_errors.for_code(code) is not kafka_errors.UnknownMemberIdError:
            raise kafka_errors.for_code(code)(f"removing member {member_id} from {group!r}")
    return gone


def watch_connections(client: Any, lost: Callable[[str], None]) -> None:
    """Call ``lost`` when a connection of ``client`` breaks (not when it idles out).

    aiokafka reconnects on its own, which would hide a network failure from
    the supervisor; a member that lost its connection also lost its place in
    the group's eyes soon after, so it reports and rejoins instead.
    """
    original = client._on_connection_closed

    def closed(conn: Any, reason: Any) -> None:
        if reason in (CloseReason.CONNECTION_BROKEN, CloseReason.CONNECTION_TIMEOUT):
            lost(f"connection to {conn.host}:{conn.port} broke ({reason.name})")
        original(conn, reason)

    client._on_connection_closed = closed


_REBALANCING = (JoinGroupRequest, SyncGroupRequest)


def wait_for_rebalances(client: Any, timeout: float) -> None:
    """Give a JoinGroup or SyncGroup answer ``timeout`` seconds; other requests keep theirs.

    The coordinator answers a join once the rebalance is done, which may take
    up to the rebalance timeout, while it answers everything else at once: a
    short request timeout notices a silent partition soon without failing a
    slow rebalance (the Java client does the same).
    """
    original = client.send

    async def send(node_id: int, request: Any, *, group: Any = ConnectionGroup.DEFAULT) -> Any:
        if not isinstance(request, _REBALANCING):
            return await original(node_id, request, group=group)
        await client.ready(node_id, group=group)
        conn = client._conns.get((node_id, group))
        if conn is None:
            return await original(node_id, request, group=group)
        usual, conn._request_timeout = conn._request_timeout, timeout
        try:
            return await original(node_id, request, group=group)
        finally:
            conn._request_timeout = usual

    client.send = send
