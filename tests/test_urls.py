"""A broker URL naming a host that does not exist fails the start, on every network broker;
a host that exists but does not answer is retried (see each broker's tests)."""

from __future__ import annotations

import pytest

from millstream import Millstream
from millstream.errors import ConfigError
from millstream.urls import url_hosts


def test_the_hosts_of_a_url_are_read_with_ports_users_and_lists() -> None:
    assert url_hosts("redis://:pw@cache.internal:6379/0") == ["cache.internal"]
    assert url_hosts("kafka://u:p@a:9092,b:9093?x=1") == ["a", "b"]
    assert url_hosts("amqp://guest:guest@[::1]:5672/") == ["::1"]
    assert url_hosts("nats://127.0.0.1") == ["127.0.0.1"]


@pytest.mark.parametrize(
    "url",
    [
        "redis://no-such-host.invalid:6379/0",
        "amqp://guest:secret@no-such-host.invalid:5672/",
        "nats://no-such-host.invalid:4222",
        "kafka://no-such-host.invalid:9092?idempotence=false",
    ],
)
async def test_a_host_that_does_not_exist_fails_the_start_naming_it(url: str) -> None:
    ms = Millstream(url)

    @ms.consumer("payments", group="billing")
    async def handle(event: dict[str, int]) -> None:
        pass

    with pytest.raises(ConfigError, match=r"no host named no-such-host\.invalid exists") as error:
        await ms.start()
    assert "secret" not in str(error.value)
    assert not ms.started
