"""The AsyncAPI 3.0 document of an app, and how it is written out as JSON or YAML.

``asyncapi_document(app)`` (``document.py``) builds it from what the app
declares, without starting anything: the web face serves it and the
command line writes it. ``payloads.py`` describes what messages carry;
``servers.py`` the broker and the security schemes.
"""

from __future__ import annotations

import enum
from typing import Any

import orjson
import yaml

from millstream.app.asyncapi.document import ASYNCAPI_VERSION, asyncapi_document

__all__ = ["ASYNCAPI_VERSION", "Format", "asyncapi_document", "render"]


# libyaml's dumper where PyYAML was built with it: the same output, several times faster.
_YAML_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


class Format(enum.StrEnum):
    """How a document is written out."""

    JSON = "json"
    YAML = "yaml"


def render(document: dict[str, Any], format: Format) -> str:
    """``document`` as JSON (indented) or YAML (keys in document order)."""
    if format is Format.YAML:
        return yaml.dump(
            document, Dumper=_YAML_DUMPER, sort_keys=False, allow_unicode=True, width=100
        )
    return orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() + "\n"
