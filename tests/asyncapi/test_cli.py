"""``millstream docs module:app``: the document written as JSON or YAML, nothing started."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import examples.orders
from millstream.app.asyncapi import asyncapi_document
from millstream.cli import app
from tests.asyncapi import problems

runner = CliRunner()


@pytest.fixture(autouse=True)
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in an empty directory, to see that writing the document leaves nothing else."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_it_writes_the_json_document_of_the_served_app_and_starts_nothing(
    elsewhere: Path,
) -> None:
    result = runner.invoke(app, ["docs", "examples.orders:app"])

    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    served = examples.orders.app
    assert document == json.loads(
        json.dumps(
            asyncapi_document(
                examples.orders.ms,
                title=served.title,
                version=served.version,
                description=served.description,
            )
        )
    )
    assert problems(document) == []
    assert not examples.orders.ms.started and examples.orders.ms.consumers == {}
    assert list(elsewhere.iterdir()) == []  # no broker file, no store


@pytest.mark.parametrize(
    ("arguments", "written"),
    [
        (["--out", "asyncapi.yaml"], "asyncapi.yaml"),
        (["--format", "yaml", "-o", "doc.txt"], "doc.txt"),
        (["-f", "YAML", "--out", "doc.json"], "doc.json"),
    ],
)
def test_it_writes_yaml_to_a_file(elsewhere: Path, arguments: list[str], written: str) -> None:
    as_json = runner.invoke(app, ["docs", "examples.orders:app"])
    result = runner.invoke(app, ["docs", "examples.orders:app", *arguments])

    assert result.exit_code == 0, result.output
    assert f"wrote {written} (yaml" in result.stderr
    assert yaml.safe_load((elsewhere / written).read_text()) == json.loads(as_json.stdout)


def test_a_bare_app_is_named_by_its_module() -> None:
    result = runner.invoke(app, ["docs", "examples.orders:ms", "--format", "json"])

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["info"]["title"] == "examples.orders"


def test_a_format_it_does_not_write_fails_naming_the_choices() -> None:
    result = runner.invoke(app, ["docs", "examples.orders:app", "--format", "xml"])

    assert result.exit_code == 2
    assert "'xml' is not one of" in result.output
    assert "'json'" in result.output and "'yaml'" in result.output


@pytest.mark.parametrize(
    ("target", "says"),
    [
        ("examples.orders:service", "'examples.orders:service' is not a millstream app"),
        ("examples.orders:nothing", "cannot load 'examples.orders:nothing'"),
        ("no_such_module:app", "cannot load 'no_such_module:app'"),
    ],
)
def test_a_target_that_is_no_app_fails_saying_what_it_is(target: str, says: str) -> None:
    result = runner.invoke(app, ["docs", target])

    assert result.exit_code == 2
    assert says in result.stderr


def test_a_file_it_cannot_write_fails_naming_it(elsewhere: Path) -> None:
    result = runner.invoke(app, ["docs", "examples.orders:app", "--out", "missing/doc.json"])

    assert result.exit_code == 1
    assert "cannot write 'missing/doc.json'" in result.stderr
