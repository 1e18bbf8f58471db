"""The payloads of an AsyncAPI document: what each message carries, as a JSON Schema.

A consumer's payload is what its handler's type hint decodes
(``runtime.handler.payload_type``): ``bytes`` and ``Message`` take any
bytes, ``str`` UTF-8 text, anything else JSON validated by pydantic. A
publication's payload is what ``millstream.message.encode`` writes for its
type. JSON payloads are described by pydantic (validation mode for what a
consumer accepts, serialization mode for what is sent), all in one set of
definitions that becomes ``components/schemas``.
"""

from __future__ import annotations

import re
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import TypeAdapter
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from millstream.message import Message, OutgoingMessage

__all__ = ["Payload", "Payloads", "name_of"]

SCHEMAS = "#/components/schemas/"

Mode = Literal["validation", "serialization"]


@dataclass(frozen=True)
class Payload:
    """How one message's payload is written: its content type and schema, or neither."""

    content_type: str | None
    schema: JsonSchemaValue | None


_ANY_BYTES = "any bytes"
_UNDECLARED = (
    "not declared: any value, as millstream encodes it (bytes as they are, text as UTF-8, "
    "anything else as JSON)"
)


class Payloads:
    """Collects payload types, then describes them all at once with shared definitions.

    ``add(hint, mode)`` returns a key; after ``describe()``, ``payload(key)`` is
    that type's :class:`Payload` and ``definitions`` the named schemas its
    ``$ref`` s point to.
    """

    def __init__(self) -> None:
        self._json: dict[tuple[Hashable, Mode], TypeAdapter[Any]] = {}
        self._fixed: dict[Hashable, Payload] = {}
        self._described: dict[tuple[Hashable, Mode], JsonSchemaValue] = {}
        self.definitions: dict[str, JsonSchemaValue] = {}

    def add(self, hint: Any, mode: Mode) -> tuple[Hashable, Mode]:
        """Register ``hint`` read (``validation``) or written (``serialization``)."""
        key = _hashable(hint)
        if hint is None:
            self._fixed[key] = Payload(None, {"description": _UNDECLARED})
        elif hint in (bytes, Message, OutgoingMessage):
            self._fixed[key] = Payload("application/octet-stream", {"description": _ANY_BYTES})
        elif hint is str:
            self._fixed[key] = Payload("text/plain; charset=utf-8", {"type": "string"})
        elif (key, mode) not in self._json:
            self._json[(key, mode)] = TypeAdapter(hint)
        return key, mode

    def describe(self) -> None:
        """Generate the JSON Schemas of every JSON payload added."""
        inputs = [(key, mode, adapter) for (key, mode), adapter in self._json.items()]
        if not inputs:
            return
        schemas, definitions = TypeAdapter.json_schemas(
            inputs, ref_template=SCHEMAS + "{model}", schema_generator=FaithfulJsonSchema
        )
        self._described = dict(schemas)
        self.definitions = definitions.get("$defs", {})

    def payload(self, key: tuple[Hashable, Mode]) -> Payload:
        hint, _ = key
        if hint in self._fixed:
            return self._fixed[hint]
        return Payload("application/json", self._described[key])


def name_of(hint: Any) -> str:
    """A short name of a payload type, for message names: the class name where it has one."""
    if hint is None:
        return "undeclared"
    name = getattr(hint, "__name__", None)
    return name if isinstance(name, str) else re.sub(r"\W+", "_", str(hint)).strip("_")


def _hashable(hint: Any) -> Hashable:
    try:
        hash(hint)
    except TypeError:  # Annotated[...] with an unhashable marker
        return repr(hint)
    return hint  # type: ignore[no-any-return]


class FaithfulJsonSchema(GenerateJsonSchema):
    """pydantic's JSON Schema, with a constrained ``Decimal`` described no looser than the
    decoder checks it.

    pydantic describes a decimal as a number or any string, and puts the
    field's bounds only on the number and its digit limits (``max_digits``,
    ``decimal_places``) on neither: that schema accepts ``"abc"``, or ``0.001``
    for a ``Field(gt=0, decimal_places=2)``, which the handler refuses. Here
    each form is kept only where it can carry every constraint: the number
    when there are no digit limits, the string (by a pattern of plain decimal
    notation) when there is no bound but ``> 0`` or ``>= 0``. A decimal
    neither form can describe keeps pydantic's schema.
    """

    def decimal_schema(self, schema: core_schema.DecimalSchema) -> JsonSchemaValue:
        default = super().decimal_schema(schema)
        if self.mode != "validation":
            return default
        forms: list[JsonSchemaValue] = []
        if schema.get("max_digits") is None and schema.get("decimal_places") is None:
            forms.append(default["anyOf"][0])  # pydantic's number, with the bounds
        pattern = decimal_pattern(schema)
        if pattern is not None:
            forms.append({"type": "string", "pattern": pattern})
        if not forms:
            return default
        return forms[0] if len(forms) == 1 else {"anyOf": forms}


def decimal_pattern(schema: core_schema.DecimalSchema) -> str | None:
    """A pattern for the decimal strings ``schema`` accepts (plain notation, no needless
    zeros), or ``None`` when a pattern cannot carry its constraints (an upper bound, a
    lower one other than 0, ``multiple_of``)."""
    gt, ge = schema.get("gt"), schema.get("ge")
    if any(schema.get(limit) is not None for limit in ("lt", "le", "multiple_of")):
        return None
    if (gt is not None and gt != 0) or (ge is not None and ge != 0):
        return None
    max_digits, places = schema.get("max_digits"), schema.get("decimal_places")
    whole = None if max_digits is None else max_digits - (places or 0)
    if max_digits is not None and places is None:
        places = 0  # how many digits may be decimals is not said: allow whole ones only
    # A whole part other than 0, with no leading zeros.
    integer = "[1-9][0-9]*" if whole is None else f"[1-9][0-9]{{0,{whole - 1}}}"
    if places == 0:
        fraction = ""
    elif places is None:
        fraction = r"(\.[0-9]+)?"
    else:
        fraction = rf"(\.[0-9]{{1,{places}}})?"
    if gt is not None:  # above 0: a whole part that is not 0, or a fraction that is not all 0
        forms = ([] if whole == 0 else [integer + fraction]) + _small_fractions(places)
        return f"^({'|'.join(forms)})$" if forms else None
    sign = "" if ge is not None else "-?"
    if whole == 0:  # every digit a decimal one: pydantic counts a bare "0" as a whole digit
        return rf"^{sign}0\.[0-9]{{1,{places}}}$"
    return f"^{sign}(0|{integer}){fraction}$"


def _small_fractions(places: int | None) -> list[str]:
    """``0.`` and a fraction with a digit other than 0, at most ``places`` digits long."""
    if places == 0:
        return []
    if places is None:
        return [r"0\.0*[1-9][0-9]*"]
    firsts = [
        "0" * zeros + "[1-9]" + (f"[0-9]{{0,{places - 1 - zeros}}}" if zeros < places - 1 else "")
        for zeros in range(places)
    ]
    return [rf"0\.({'|'.join(firsts)})"]
