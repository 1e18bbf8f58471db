"""The Dockerfile: hadolint, the build context, and its command and healthcheck run as the
image would run them (no image is built here: no registry to pull the base from)."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import IO

import httpx
import pytest
from docker.utils.build import exclude_paths
from dockerfile_parse import DockerfileParser

from tests.brokers.server_process import free_port
from tests.deploy.manifests import ROOT
from tests.support import until_equal

DOCKERFILE = ROOT / "Dockerfile"
HADOLINT = Path(sys.executable).parent / "hadolint"


def instructions(name: str) -> list[str]:
    """The values of the Dockerfile's ``name`` instructions, in order."""
    parser = DockerfileParser(path=str(DOCKERFILE))
    return [each["value"] for each in parser.structure if each["instruction"] == name]


def hadolint(text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "Dockerfile"
    path.write_text(text)
    return subprocess.run(
        [str(HADOLINT), "--no-color", str(path)], capture_output=True, text=True, timeout=60
    )


def test_hadolint_passes_the_dockerfile_and_fails_a_root_copy(tmp_path: Path) -> None:
    text = DOCKERFILE.read_text()
    done = hadolint(text, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "USER 10001:10001\n" in text
    broken = hadolint(text.replace("USER 10001:10001\n", "USER root\n"), tmp_path)
    assert broken.returncode != 0 and "DL3002" in broken.stdout, broken.stdout


def test_the_build_context_holds_what_the_dockerfile_copies_and_nothing_private() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    context = exclude_paths(str(ROOT), patterns, dockerfile="Dockerfile")
    copied = [value.split() for value in instructions("COPY")]
    sources = [part for args in copied if not args[0].startswith("--from") for part in args[:-1]]
    assert sources == ["pyproject.toml", "README.md", "millstream/", "examples/"]
    for source in sources:
        files = sorted((ROOT / source).rglob("*.py")) if source.endswith("/") else [ROOT / source]
        assert files, source
        for path in files:
            if "__pycache__" not in path.parts:
                assert path.relative_to(ROOT).as_posix() in context, f"{path} is not in the context"
    private = (".git/", ".venv/", "tests/", ".millstream/", ".env")
    leaked = sorted(path for path in context if path.startswith(private))
    assert not leaked, f"the build context has {leaked[:5]}"


def test_the_default_extras_are_extras_of_the_package() -> None:
    [extras_arg] = [arg for arg in instructions("ARG") if arg.startswith("EXTRAS=")]
    wanted = extras_arg.removeprefix("EXTRAS=").split(",")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert set(wanted) <= set(project["optional-dependencies"])
    assert wanted == ["redis", "postgres"]  # the order service on Redis and PostgreSQL


def image_command() -> list[str]:
    """ENTRYPOINT + CMD, with the virtualenv's console script for ``millstream``."""
    [entrypoint] = instructions("ENTRYPOINT")
    [command] = instructions("CMD")
    argv: list[str] = json.loads(entrypoint) + json.loads(command)
    assert argv[0] == "millstream"
    return [str(Path(sys.executable).parent / "millstream"), *argv[1:]]


def healthcheck() -> list[str]:
    [value] = instructions("HEALTHCHECK")
    argv: list[str] = json.loads(value.split(" CMD ", 1)[1])
    assert argv[0] == "python"
    return [sys.executable, *argv[1:]]


def start(
    argv: list[str], cwd: Path, env: dict[str, str], log: IO[bytes]
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, cwd=cwd, env=env, stdout=log, stderr=log)


@pytest.mark.slow
async def test_the_image_command_serves_the_order_service_and_passes_its_healthcheck(
    tmp_path: Path,
) -> None:
    # The image's /app: the examples, as WORKDIR and COPY lay them out.
    app = tmp_path / "app"
    shutil.copytree(
        ROOT / "examples", app / "examples", ignore=shutil.ignore_patterns("__pycache__")
    )
    laid_out = sorted(app.rglob("*"))
    port = free_port()
    env = {
        **DockerfileParser(path=str(DOCKERFILE)).envs,
        "PATH": str(Path(sys.executable).parent),
        "MILLSTREAM_HOST": "127.0.0.1",  # the image's 0.0.0.0, kept to loopback here
        "MILLSTREAM_PORT": str(port),
        "MILLSTREAM_BROKER_URL": "memory://",
        "MILLSTREAM_STORE_URL": f"sqlite:///{tmp_path}/state.db",
        "MILLSTREAM_JWT_SECRET": "an-image-test-secret-0123456789abcdef",
    }
    log = tmp_path / "output.log"
    with log.open("wb") as out:
        process = start(image_command(), app, env, out)
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:

                async def ready() -> int | None:
                    try:
                        return (await http.get("/health/consumers")).status_code
                    except httpx.TransportError:
                        return None

                await until_equal(ready, 200, within=30)
                consumers = (await http.get("/health/consumers")).json()["consumers"]
                assert set(consumers) == {"payments", "notifications"}, consumers
            checked = await asyncio.to_thread(subprocess.run, healthcheck(), env=env, timeout=30)
            assert checked.returncode == 0
        finally:
            process.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(process.wait, 30)
    assert code == 0, log.read_text()[-2000:]
    # Nothing listens now: the healthcheck fails.
    failed = await asyncio.to_thread(
        subprocess.run, healthcheck(), env=env, capture_output=True, timeout=30
    )
    assert failed.returncode != 0
    # Nothing written beside the code (no .millstream/, no __pycache__): a read-only root works.
    assert sorted(app.rglob("*")) == laid_out
