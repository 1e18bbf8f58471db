"""Tests of the AsyncAPI document: valid AsyncAPI 3.0, faithful payloads, served, written.

``validator()`` checks a document against the official AsyncAPI 3.0.0 JSON
Schema shipped in ``schema/`` (offline); ``unresolved()`` finds the local
references in a document that point nowhere, which the JSON Schema cannot.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from jsonschema import Draft7Validator

SCHEMA = Path(__file__).parent / "schema" / "asyncapi-3.0.0.json"


@functools.cache
def validator() -> Draft7Validator:
    schema = json.loads(SCHEMA.read_text())
    Draft7Validator.check_schema(schema)
    return Draft7Validator(schema, format_checker=Draft7Validator.FORMAT_CHECKER)


def problems(document: dict[str, Any]) -> list[str]:
    """Why ``document`` is not valid AsyncAPI 3.0.0 (the schema's errors, then dangling
    references); empty when it is."""
    found = [
        f"{'/'.join(map(str, error.absolute_path)) or '(root)'}: {error.message[:200]}"
        for error in validator().iter_errors(document)
    ]
    return found + [f"{ref}: points nowhere" for ref in unresolved(document)]


def resolve(document: dict[str, Any], ref: str) -> Any:
    """What the local reference ``ref`` (``#/a/b``) points at; ``KeyError`` if nothing."""
    found: Any = document
    for part in ref.removeprefix("#/").split("/"):
        found = found[part.replace("~1", "/").replace("~0", "~")]
    return found


def unresolved(document: dict[str, Any]) -> list[str]:
    """The ``$ref`` s in ``document`` that point nowhere in it."""
    missing = []
    for ref in _refs(document):
        try:
            resolve(document, ref)
        except (KeyError, TypeError):
            missing.append(ref)
    return missing


def _refs(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, inner in value.items():
            if key == "$ref" and isinstance(inner, str):
                yield inner
            else:
                yield from _refs(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from _refs(inner)
