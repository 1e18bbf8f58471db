"""Every MILLSTREAM_* variable the Dockerfile, compose and the manifests set is a setting
with a valid value: a misspelt one in the environment would be silently ignored."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

from millstream.errors import ConfigError
from tests.deploy.manifests import DEPLOY, K8S, OVERLAYS, ROOT, documents
from tests.deploy.settings import load_as_dotenv


def k8s_variables(overlay: str) -> dict[str, str]:
    """What the base's ConfigMap, Secret and Deployment set, with ``overlay``'s broker URL."""
    [config] = documents(K8S / "base" / "configmap.yaml")
    [secret] = documents(K8S / "base" / "secret.yaml")
    [broker] = documents(K8S / "overlays" / overlay / "broker.yaml")
    [deployment] = documents(K8S / "base" / "deployment.yaml")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    env = {item["name"]: item.get("value", "from-the-pod") for item in container["env"]}
    return {**config["data"], **secret["stringData"], **broker["stringData"], **env}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_manifests_set_only_settings(
    overlay: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    variables = k8s_variables(overlay)
    settings = load_as_dotenv(variables, tmp_path, monkeypatch)
    assert settings.broker_url == variables["MILLSTREAM_BROKER_URL"]
    assert settings.store_url.startswith("postgresql://")
    assert settings.cache_url is not None and settings.cache_url.startswith("redis://")
    assert settings.jwt_secret is not None
    assert settings.drain_timeout == float(variables["MILLSTREAM_DRAIN_TIMEOUT"])


def compose_variables(env_file: Path | None) -> dict[str, str]:
    """The orders service's environment as compose interpolates it with ``env_file``."""
    [compose] = documents(DEPLOY / "compose.yaml")
    given = {"MILLSTREAM_JWT_SECRET": "a-secret-the-user-exported-0123456789"}
    if env_file is not None:
        given |= dotenv(env_file)

    def interpolate(match: re.Match[str]) -> str:
        name, default = match["name"], match["default"]
        if name in given:
            return given[name]
        assert default is not None, f"${{{name}}} has no default and is not set"
        return default

    pattern = re.compile(r"\$\{(?P<name>\w+)(?::-(?P<default>[^}]*)|:\?[^}]*)?\}")
    env = compose["services"]["orders"]["environment"]
    return {name: pattern.sub(interpolate, str(value)) for name, value in env.items()}


def dotenv(path: Path) -> dict[str, str]:
    lines = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines)


@pytest.mark.parametrize("broker", [None, "rabbitmq", "nats", "kafka"], ids=str)
def test_compose_sets_only_settings(
    broker: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_file = None if broker is None else DEPLOY / "compose" / f"{broker}.env"
    variables = compose_variables(env_file)
    settings = load_as_dotenv(variables, tmp_path, monkeypatch)
    scheme = {None: "redis", "rabbitmq": "amqp", "nats": "nats", "kafka": "kafka"}[broker]
    assert settings.broker_url.startswith(f"{scheme}://")


def test_the_image_sets_only_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    envs = DockerfileParser(path=str(ROOT / "Dockerfile")).envs
    variables = {name: value for name, value in envs.items() if name.startswith("MILLSTREAM_")}
    assert variables == {"MILLSTREAM_HOST": "0.0.0.0", "MILLSTREAM_PORT": "8080"}
    settings = load_as_dotenv(variables, tmp_path, monkeypatch)
    assert (settings.host, settings.port) == ("0.0.0.0", 8080)


def test_a_misspelt_variable_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    variables = {**k8s_variables("redis"), "MILLSTREAM_DRAIN_TIMEOUTS": "30"}
    with pytest.raises(ConfigError, match="MILLSTREAM_DRAIN_TIMEOUTS"):
        load_as_dotenv(variables, tmp_path, monkeypatch)
