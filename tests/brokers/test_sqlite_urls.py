"""SQLite broker URLs and paths: mistakes name the fix, directories are made, files reopen."""

from __future__ import annotations

from pathlib import Path

import pytest

from millstream.brokers import connect
from millstream.errors import BrokerUnavailable, ConfigError
from tests.brokers.sqlite_support import TOPIC, opened, outgoing, url_of


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite://x", "has no path"),
        ("sqlite://", "has no path"),
        ("sqlite:///", "has no path"),
        ("sqlite://host/broker.db", "has no path"),
        ("sqlite:///:memory:", "memory://"),
        ("sqlite:///./data/", "names a directory"),
        ("sqlite:///./b.db?lease=soon", "lease='soon'"),
        ("sqlite:///./b.db?lease=0", "lease='0'"),
        ("sqlite:///./b.db?synchronous=OFF", "synchronous='OFF'"),
        ("sqlite:///./b.db?leese=5", "unknown parameter(s) leese"),
    ],
)
def test_bad_urls_say_what_is_wrong_and_what_is_expected(url: str, expected: str) -> None:
    with pytest.raises(ConfigError) as raised:
        connect(url)
    assert expected in str(raised.value)
    assert repr(url) in str(raised.value)
    assert "sqlite:///" in str(raised.value).replace(repr(url), "")


async def test_relative_and_absolute_paths_create_their_directories(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    relative = connect("sqlite:///./.millstream/nested/broker.db?lease=5&synchronous=full")
    absolute = connect(f"sqlite:///{tmp_path}/elsewhere/broker.db")
    assert absolute.url == f"sqlite:////{str(tmp_path).lstrip('/')}/elsewhere/broker.db"
    for broker in (relative, absolute):
        await broker.connect()
        await broker.publish(TOPIC, outgoing("a"))
        await broker.close()
    assert (tmp_path / ".millstream" / "nested" / "broker.db").is_file()
    assert (tmp_path / "elsewhere" / "broker.db").is_file()


async def test_a_path_that_cannot_be_created_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("a file, not a directory")
    broker = connect(url_of(tmp_path / "taken" / "broker.db"))
    with pytest.raises(ConfigError, match="cannot create directory"):
        await broker.connect()
    await broker.close()


async def test_connect_reopens_the_file_after_the_connection_failed(tmp_path: Path) -> None:
    async with opened(url_of(tmp_path / "broker.db")) as broker:
        subscription = await broker.subscribe(TOPIC, "billing", prefetch=10)
        await broker.publish(TOPIC, outgoing("a", "b"))
        held = await subscription.fetch(1, 1.0)

        # The file turns read-only under the open connection, as after a remount.
        await broker.current().run(lambda conn: conn.execute("PRAGMA query_only = ON"))
        with pytest.raises(BrokerUnavailable, match="readonly"):
            await broker.publish(TOPIC, outgoing("c"))
        with pytest.raises(BrokerUnavailable):
            await subscription.fetch(10, 0.1)  # the member went with its connection

        await broker.connect()  # the supervisor's reconnect opens the file afresh
        await broker.publish(TOPIC, outgoing("c"))
        with pytest.raises(BrokerUnavailable):
            await subscription.settle(held, [], [])
        again = await broker.subscribe(TOPIC, "billing", prefetch=10)
        back = await again.fetch(10, 1.0)
        # As after a cut: what the failed member held is back, the attempt counted.
        assert [(m.payload, m.attempt) for m in back] == [(b"a", 2), (b"b", 1), (b"c", 1)]
