"""Decoding a payload into what a handler's type hint asks for.

``decoder_for(hint)`` is chosen once per handler, at decoration: bytes as
they are, ``str`` as UTF-8, the ``Message`` itself, anything else validated
from JSON by pydantic's core validator (no wrapper per message). A payload
that does not decode raises ``DecodeError`` naming what was found and what
was expected, and goes to the dead letters with that reason.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import TypeAdapter, ValidationError

from millstream.errors import DecodeError
from millstream.message import Message

__all__ = ["ACCEPTED", "Decoder", "decoder_for"]

Decoder = Callable[[Message], Any]

ACCEPTED = "a pydantic model, dict, list, bytes, str or Message"
"""What a payload parameter may be annotated with, for error messages."""


def _decode_bytes(message: Message) -> bytes:
    return message.payload


def _decode_str(message: Message) -> str:
    try:
        return message.payload.decode()
    except UnicodeDecodeError as exc:
        raise DecodeError(f"payload is not UTF-8 text: {exc}") from None


def _decode_envelope(message: Message) -> Message:
    return message


def _json_decoder(hint: Any) -> Decoder:
    adapter: TypeAdapter[Any] = TypeAdapter(hint)
    validate = adapter.validator.validate_json  # the core validator: no wrapper per message
    name = getattr(hint, "__name__", repr(hint))

    def decode(message: Message) -> Any:
        try:
            return validate(message.payload)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or '(payload)'}: {err['msg']}"
                for err in exc.errors(include_url=False)[:5]
            )
            raise DecodeError(f"payload does not validate as {name}: {problems}") from None

    return decode


def decoder_for(hint: Any) -> Decoder:
    if hint is bytes:
        return _decode_bytes
    if hint is str:
        return _decode_str
    if hint is Message:
        return _decode_envelope
    return _json_decoder(hint)
