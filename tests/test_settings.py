"""Where settings come from: arguments, variables, a `.env` file, a secrets directory."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest

from millstream.demo import _development_secret
from millstream.errors import ConfigError
from millstream.settings import load_settings


@pytest.fixture(autouse=True)
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test in its own working directory, with no MILLSTREAM_* variable set."""
    monkeypatch.chdir(tmp_path)
    for name in [n for n in os.environ if n.startswith("MILLSTREAM_")]:
        monkeypatch.delenv(name)
    return tmp_path


def test_a_dotenv_file_sets_what_the_environment_does_not(
    elsewhere: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (elsewhere / ".env").write_text(
        "# shared with other programs\nDATABASE_URL=postgres://x\n"
        "MILLSTREAM_PREFETCH=64\nMILLSTREAM_PORT=9000\nMILLSTREAM_LOG_FORMAT=json\n"
    )
    monkeypatch.setenv("MILLSTREAM_PORT", "9100")
    settings = load_settings()
    assert (settings.prefetch, settings.port) == (64, 9100)  # the environment wins
    assert load_settings(prefetch=8).prefetch == 8  # and an argument wins over both


def test_a_misspelt_setting_in_dotenv_fails_naming_the_line_and_the_fix(elsewhere: Path) -> None:
    (elsewhere / ".env").write_text("MILLSTREAM_PREFECH=64\n")
    with pytest.raises(ConfigError, match=r"MILLSTREAM_PREFECH in \.env is not a setting; "
                       r"did you mean MILLSTREAM_PREFETCH\?"):  # fmt: skip
        load_settings()


def test_a_secrets_directory_gives_one_setting_per_file(
    elsewhere: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secrets = elsewhere / "secrets"
    secrets.mkdir()
    (secrets / "MILLSTREAM_JWT_SECRET").write_text("from-a-mounted-secret\n")
    (secrets / "..data").mkdir()  # what Kubernetes mounts beside the files
    monkeypatch.setenv("MILLSTREAM_SECRETS_DIR", str(secrets))
    secret = load_settings().jwt_secret
    assert secret is not None and secret.get_secret_value() == "from-a-mounted-secret"
    monkeypatch.setenv("MILLSTREAM_JWT_SECRET", "from-the-environment")
    secret = load_settings().jwt_secret
    assert secret is not None and secret.get_secret_value() == "from-the-environment"


def test_a_secrets_directory_that_is_not_one_fails_naming_the_variable(
    elsewhere: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MILLSTREAM_SECRETS_DIR", str(elsewhere / "missing"))
    with pytest.raises(ConfigError, match=r"MILLSTREAM_SECRETS_DIR=.*is not a directory"):
        load_settings()


def test_the_demo_keeps_its_development_secret_across_restarts(elsewhere: Path) -> None:
    first = _development_secret()
    assert _development_secret() == first and len(first) >= 32
    kept = elsewhere / ".millstream" / "demo" / "jwt-secret"
    assert kept.read_text() == first
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600


def test_a_variable_that_nearly_names_a_setting_is_warned_of_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("MILLSTREAM_DRAIN_TIMEOUTS", "60")
    monkeypatch.setenv("MILLSTREAM_REQUIRE_BROKERS", "1")  # another tool's: left alone
    with caplog.at_level(logging.WARNING, logger="millstream"):
        assert load_settings().drain_timeout == 30.0
        load_settings()
    said = [r.getMessage() for r in caplog.records]
    assert said == [
        "MILLSTREAM_DRAIN_TIMEOUTS is set but is not a setting, so it does nothing; "
        "did you mean MILLSTREAM_DRAIN_TIMEOUT?"
    ]
