"""One frozen settings object: arguments, then ``MILLSTREAM_*`` variables, then a ``.env``
file, then a secrets directory, then defaults."""

from __future__ import annotations

import difflib
import logging
import os
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from millstream.errors import ConfigError

__all__ = ["SECRETS_DIR", "Settings", "load_settings"]

log = logging.getLogger("millstream")

SECRETS_DIR = "MILLSTREAM_SECRETS_DIR"
"""The variable naming a directory with one file per setting (as Kubernetes mounts a Secret)."""

# MILLSTREAM_* variables that are not settings: read by the command line before settings are.
_NOT_SETTINGS = frozenset({"millstream_log_format", SECRETS_DIR.lower()})


class _OwnDotEnv(DotEnvSettingsSource):
    """The ``.env`` file's ``MILLSTREAM_*`` lines only: it may configure other programs too."""

    def _load_env_vars(self) -> dict[str, str | None]:
        found = super()._load_env_vars()
        prefix = (self.env_prefix or "").lower()
        return {
            name: value
            for name, value in found.items()
            if name.lower().startswith(prefix) and name.lower() not in _NOT_SETTINGS
        }


class Settings(BaseSettings):
    """Everything a millstream service is configured by.

    Each field can be set as an argument (``Settings(prefetch=64)``), as an
    environment variable named ``MILLSTREAM_`` plus the field name in upper
    case (``MILLSTREAM_PREFETCH=64``), as such a line in a ``.env`` file in the
    working directory, or as a file of that name (``MILLSTREAM_JWT_SECRET``)
    in the directory ``MILLSTREAM_SECRETS_DIR`` names, in that order.
    """

    model_config = SettingsConfigDict(
        env_prefix="MILLSTREAM_",
        frozen=True,
        extra="forbid",
        env_file=".env",
        env_file_encoding="utf-8",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, _OwnDotEnv(settings_cls), file_secret_settings

    broker_url: str = Field(
        "sqlite:///./.millstream/broker.db",
        description="where messages live: sqlite:///path, memory://, redis://, amqp://, ...",
    )
    member: str | None = Field(
        None,
        description="this process's stable name in consumer groups, the same after a restart "
        "(e.g. the pod name); it takes back at once what it held before a crash. Default: the "
        "host name plus a slot number no other live process on this host holds",
    )
    host: str = Field("127.0.0.1", description="interface `millstream run` listens on")
    port: int = Field(8080, ge=0, le=65535, description="port `millstream run` listens on")
    drain_timeout: float = Field(
        30.0, gt=0, description="seconds a stop waits for in-flight handlers to finish"
    )
    shutdown_linger: float = Field(
        1.0,
        ge=0,
        description="seconds `millstream run` keeps answering after SIGTERM (readiness 503, "
        "every response `Connection: close`) before it stops accepting connections",
    )
    prefetch: int = Field(256, ge=1, le=65536, description="messages fetched per round trip")
    max_inflight: int | None = Field(
        None,
        ge=1,
        description="messages held per consumer (default: 4 x prefetch, at least 2 x concurrency)",
    )
    settle_batch: int = Field(256, ge=1, description="outcomes settled per round trip at most")
    settle_interval: float = Field(
        0.005, gt=0, le=5, description="seconds an outcome may wait to join a batch"
    )
    gc_freeze: bool = Field(
        True,
        description="after start, hide the objects alive then from the garbage collector "
        "(gc.freeze): shorter full-collection pauses under load",
    )
    poll_timeout: float = Field(1.0, gt=0, description="seconds one fetch waits for messages")
    handler_timeout: float | None = Field(
        None, gt=0, description="seconds a handler may run before it counts as failed"
    )
    reconnect_backoff: float = Field(0.2, gt=0, description="first reconnect delay, seconds")
    reconnect_max_backoff: float = Field(30.0, gt=0, description="longest reconnect delay, seconds")
    health_max_lag: int | None = Field(
        None, ge=0, description="a consumer is DOWN in /health/consumers when its lag exceeds this"
    )
    health_ready_consumers: bool = Field(
        False,
        description="/health/ready also requires the broker and every consumer (by default "
        "it means: send me HTTP traffic, which the outbox serves with the broker down)",
    )
    jwt_secret: SecretStr | None = Field(
        None, description="HS256 secret verifying bearer tokens (or set jwt_public_key)"
    )
    jwt_public_key: str | None = Field(
        None, description="PEM public key verifying RS256 bearer tokens"
    )
    jwt_audience: str | None = Field(None, description="required `aud` claim, if any")
    jwt_issuer: str | None = Field(None, description="required `iss` claim, if any")
    rate_limit: float | None = Field(
        None, gt=0, description="requests per second per client on API routes (off when unset)"
    )
    rate_limit_burst: int = Field(20, ge=1, description="requests a client may burst")
    max_body_bytes: int = Field(1_048_576, ge=1, description="largest request body accepted")
    dlq_replay_rate: float = Field(
        500.0, gt=0, description="dead letters replayed per second at most"
    )
    store_url: str = Field(
        "sqlite:///./.millstream/state.db",
        description="the state store: sqlite:///path or postgresql://user:pass@host:5432/db",
    )
    outbox_batch: int = Field(500, ge=1, le=10_000, description="outbox rows published per batch")
    outbox_poll_interval: float = Field(
        0.5, gt=0, le=60, description="seconds between outbox checks when nothing woke the relay"
    )
    idempotency_retention: float = Field(
        7 * 86400.0,
        gt=0,
        description="seconds a processed message id is remembered (longer than any redelivery)",
    )
    cache_url: str | None = Field(
        None,
        description="redis:// URL carrying cache invalidations between instances "
        "(in-process only when unset)",
    )
    cache_channel: str | None = Field(
        None,
        min_length=1,
        description="name the instances of one service share cache invalidations under, on "
        "the database of cache_url; give every instance of a service the same one and other "
        "services another (default: derived from store_url's host, port and database or "
        "file path, so set it when instances reach one database by different addresses)",
    )


def load_settings(**overrides: Any) -> Settings:
    """Build ``Settings``; a bad value raises ``ConfigError`` naming the setting and the fix."""
    given = {name: value for name, value in overrides.items() if value is not None}
    unknown = sorted(set(given) - set(Settings.model_fields))
    if unknown:
        raise ConfigError(
            f"unknown setting(s) {', '.join(unknown)}; "
            f"known settings are {', '.join(sorted(Settings.model_fields))}"
        )
    _warn_of_near_misses()
    secrets = os.environ.get(SECRETS_DIR)
    if secrets and not Path(secrets).is_dir():
        raise ConfigError(
            f"{SECRETS_DIR}={secrets!r} is not a directory; point it at the directory where "
            "one file per setting is mounted (e.g. /run/secrets/millstream), or unset it"
        )
    try:
        return Settings(**given, _secrets_dir=secrets or None)  # type: ignore[call-arg]
    except ValidationError as exc:
        lines = []
        for error in exc.errors(include_url=False):
            field = str(error["loc"][0]) if error["loc"] else "?"
            if error["type"] == "extra_forbidden":  # only a .env line can be one
                lines.append(_not_a_setting(field))
                continue
            env = f"MILLSTREAM_{field.upper()}"
            hint = (
                Settings.model_fields[field].description if field in Settings.model_fields else ""
            )
            lines.append(
                f"setting {field} (argument {field}= or {env}) = {error.get('input')!r}: "
                f"{error['msg']}" + (f"; expected {hint}" if hint else "")
            )
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None


def _not_a_setting(name: str) -> str:
    """What to say of a ``MILLSTREAM_*`` line in ``.env`` that names no setting."""
    field = name.lower().removeprefix("millstream_")
    close = difflib.get_close_matches(field, list(Settings.model_fields), n=1)
    fix = f"did you mean MILLSTREAM_{close[0].upper()}?" if close else "remove the line"
    return f"{name.upper()} in .env is not a setting; {fix}"


_warned: set[str] = set()


def _warn_of_near_misses() -> None:
    """Log, once, each ``MILLSTREAM_*`` variable that is no setting but nearly names one
    (``MILLSTREAM_DRAIN_TIMEOUTS``): the environment is shared with other tools, so others
    are left alone, but a typo in a deployment would otherwise go unnoticed."""
    for name in os.environ:
        field = name.lower().removeprefix("millstream_")
        if not name.startswith("MILLSTREAM_") or field in Settings.model_fields:
            continue
        close = difflib.get_close_matches(field, list(Settings.model_fields), n=1, cutoff=0.85)
        if close and name not in _warned:
            _warned.add(name)
            log.warning(
                "%s is set but is not a setting, so it does nothing; did you mean MILLSTREAM_%s?",
                name,
                close[0].upper(),
            )
