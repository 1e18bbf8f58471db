"""The pytest plugin: loaded by its entry point, a fixture, and options choosing the broker."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from millstream import Millstream
from millstream.testing import TestApp


def test_the_plugin_is_loaded_by_its_entry_point(pytestconfig: pytest.Config) -> None:
    plugin = pytestconfig.pluginmanager.get_plugin("millstream")
    assert plugin is not None and plugin.__name__ == "millstream.testing.plugin"
    assert pytestconfig.getoption("millstream_broker") is None  # this run: the memory broker


async def test_the_fixture_makes_a_test_app(millstream_test: Callable[..., TestApp]) -> None:
    ms = Millstream("memory://")

    @ms.consumer("pings", group="g")
    async def ping(text: str) -> None:
        pass

    async with millstream_test(ms) as t:
        assert t.hub is not None  # no --millstream-broker: the memory broker
        await t.publish("pings", "hello")
        await t.drain()
        assert t.calls(ping) == ["hello"]


USER_TEST = """
from millstream import Millstream


async def test_on_the_broker_given(millstream_test):
    ms = Millstream("memory://")

    @ms.consumer("pings", group="g")
    async def ping(text: str) -> None:
        pass

    async with millstream_test(ms) as t:
        assert t.hub is None and ms.broker.url == "memory://?lease=7"
        await t.publish("pings", "hello")
        await t.drain()
        assert t.calls(ping) == ["hello"]
"""


def test_the_broker_option_runs_a_users_tests_on_that_broker(tmp_path: Path) -> None:
    (tmp_path / "test_user.py").write_text(USER_TEST)
    # A project of the user's: none of this repository's configuration or conftest.
    (tmp_path / "pytest.ini").write_text("[pytest]\nasyncio_mode = auto\n")
    run = subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"),
            *("--millstream-broker=memory://?lease=7", str(tmp_path / "test_user.py")),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 passed" in run.stdout
