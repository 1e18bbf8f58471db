"""Members in processes of their own: one of three is SIGKILLed, the others finish."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from pathlib import Path

import pytest

from millstream import OutgoingMessage
from millstream.brokers import connect
from millstream.brokers.base import Broker
from tests.conformance.factory import BrokerFactory, group_of, needs
from tests.conftest import report
from tests.procs.group import ends, ready, running, spawn, starts, stop
from tests.support import total_lag, until

pytestmark = pytest.mark.slow

MESSAGES = 3000


async def test_sigkill_of_one_of_three_processes_the_others_finish_everything(
    brokers: BrokerFactory, topic: str, tmp_path: Path
) -> None:
    """Three processes share a group; the first is SIGKILLed once 900 were handled.

    The two survivors handle every message; what the killed process had
    started comes to them again, as attempt 2, and (where survivors keep their
    share) nothing else is handled twice; then they stop cleanly and the
    group's lag is 0.
    """
    needs(brokers, "group_url", "members in other processes")
    assert brokers.group_url is not None
    url, group = brokers.group_url, group_of(topic)
    publisher = connect(url)
    await publisher.connect()
    logs = [tmp_path / f"consumer-{i}.log" for i in range(3)]
    processes = [spawn(url, topic, log, 0.01, group=group) for log in logs]
    # Keyed, so a broker that spreads by key (Kafka) gives every member a share.
    messages = [OutgoingMessage(f'{{"n": {i}}}'.encode(), key=str(i)) for i in range(MESSAGES)]
    try:
        await until(lambda: ready(logs), within=30)
        await asyncio.sleep(brokers.members_join)
        await publisher.publish(topic, messages)
        await until(lambda: sum(len(ends(log)) for log in logs) >= 900, within=60)
        assert all(ends(log) for log in logs), "a process got no work"
        # Killed while a handler of it runs (under load a member may be between batches).
        await until(lambda: bool(running(logs[0])), within=30)
        processes[0].send_signal(signal.SIGKILL)
        processes[0].wait(timeout=10)
        everything = set(range(MESSAGES))
        await until(lambda: {n for log in logs for n, _ in ends(log)} == everything, within=60)
        await asyncio.sleep(0.5)
        stop(processes[1:])
        assert await _group_lag(brokers, publisher, topic, group) == 0
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
        await publisher.close()

    assert 0 < len(ends(logs[0])) < MESSAGES
    assert running(logs[0]), "the kill caught no handler running"
    survived = [(n, a) for log in logs[1:] for n, a in ends(log)]
    assert {a for _, a in survived} <= {1, 2}
    assert all(a == 2 for n, a in survived if n in starts(logs[0]))
    twice = Counter(n for n, _ in survived)
    report(
        f"member SIGKILL of three [{brokers.name}]",
        published=MESSAGES,
        handled_by_the_killed=len(ends(logs[0])),
        redelivered=len(set(twice) & starts(logs[0])),
        twice_among_survivors=sum(1 for count in twice.values() if count > 1),
    )
    if brokers.survivors_keep_their_share:
        assert max(twice.values()) == 1, "the survivors handled a message twice between them"
        everywhere = Counter(n for log in logs for n, _ in ends(log))
        duplicates = {n for n, count in everywhere.items() if count > 1}
        assert duplicates <= starts(logs[0]), "a duplicate that the killed process never had"


async def _group_lag(brokers: BrokerFactory, publisher: Broker, topic: str, group: str) -> int:
    if brokers.group_lag is not None:
        return await brokers.group_lag(publisher, topic, group)
    sub = await publisher.subscribe(topic, group, prefetch=10)
    lag = await total_lag(sub)
    assert lag is not None, f"the {brokers.name} broker reports no lag"
    return lag
