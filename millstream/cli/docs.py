"""``millstream docs module:app``: write the app's AsyncAPI 3.0 document, starting nothing.

The target is a ``Millstream`` (or ``App``), or the FastAPI app serving
one (``examples.orders:app``), whose title, version and description name
the document as its OpenAPI schema does; for a bare app the module names it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from millstream.app import App
from millstream.app.asyncapi import Format, asyncapi_document, render
from millstream.cli.common import app, fail, imported, stderr
from millstream.errors import ConfigError

__all__ = ["docs"]


@app.command()
def docs(
    target: Annotated[
        str,
        typer.Argument(
            help="The app, as module:attribute: a Millstream, or the FastAPI app serving one.",
            show_default=False,
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="Write to this file (default: standard output).", show_default=False
        ),
    ] = None,
    format: Annotated[
        Format | None,
        typer.Option(
            "--format",
            "-f",
            case_sensitive=False,
            help="json or yaml (default: yaml for an --out ending in .yaml or .yml, else json).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Write the AsyncAPI 3.0 document of TARGET (e.g. examples.orders:app); starts nothing."""
    try:
        ms, named = _app_of(target, imported(target, "examples.orders:app"))
        document = asyncapi_document(ms, **named)
    except ConfigError as exc:
        fail(str(exc), code=2)
    if format is None:
        yaml = out is not None and out.suffix.lower() in (".yaml", ".yml")
        format = Format.YAML if yaml else Format.JSON
    text = render(document, format)
    if out is None:
        typer.echo(text, nl=False)
        return
    try:
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        fail(f"cannot write {str(out)!r}: {exc.strerror or exc}", code=1)
    stderr().print(f"wrote {out} ({format.value}, {len(text.encode()):,} bytes)", markup=False)


def _app_of(target: str, loaded: Any) -> tuple[App, dict[str, Any]]:
    """The app ``loaded`` is or serves, and the title, version and description naming it."""
    if isinstance(loaded, App):
        return loaded, {"title": target.partition(":")[0]}
    service = getattr(getattr(loaded, "state", None), "millstream", None)
    served = getattr(service, "ms", None)
    if isinstance(served, App):
        named = {
            "title": getattr(loaded, "title", None),
            "version": getattr(loaded, "version", None),
            "description": getattr(loaded, "description", None) or "",
        }
        return served, named
    raise ConfigError(
        f"{target!r} is not a millstream app but a {type(loaded).__name__}; expected "
        "module:attribute naming a Millstream, or the FastAPI app serving one "
        "(ms.fastapi()), e.g. examples.orders:app"
    )
