"""Whether variables a deployment file sets are millstream settings with valid values."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from millstream.settings import Settings, load_settings


def load_as_dotenv(
    variables: dict[str, str], directory: Path, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    """``variables`` read as millstream reads a ``.env`` file, where a ``MILLSTREAM_*`` name
    that is no setting, or a bad value, fails with the setting named (an environment
    variable that is no setting would just be ignored)."""
    for name in [name for name in os.environ if name.startswith("MILLSTREAM_")]:
        monkeypatch.delenv(name)
    (directory / ".env").write_text("".join(f"{k}={v}\n" for k, v in variables.items()))
    monkeypatch.chdir(directory)
    return load_settings()
