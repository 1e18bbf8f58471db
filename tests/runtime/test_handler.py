from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from pydantic import BaseModel

from millstream import DecodeError, Message
from millstream.errors import HandlerSignatureError
from millstream.runtime.handler import bind_handler, check_handler, with_timeout
from millstream.runtime.spec import ConsumerSpec


class Payment(BaseModel):
    order_id: str
    amount: int


def msg(payload: bytes) -> Message:
    return Message(id="m-1", topic="t", payload=payload, attempt=2)


POOL = ThreadPoolExecutor(2)


async def test_decodes_by_the_first_parameters_type_and_passes_the_envelope() -> None:
    got: list[object] = []

    async def typed(p: Payment, m: Message) -> None:
        got.extend([p, m.attempt])

    async def as_dict(d: dict[str, int]) -> None:
        got.append(d)

    async def raw(b: bytes) -> None:
        got.append(b)

    async def text(s: str) -> None:
        got.append(s)

    for handler, payload in [
        (typed, b'{"order_id": "o-1", "amount": 5}'),
        (as_dict, b'{"a": 1}'),
        (raw, b"\xff\x00"),
        (text, "zürich".encode()),
    ]:
        await bind_handler(handler, lambda: POOL)(msg(payload))

    assert got == [Payment(order_id="o-1", amount=5), 2, {"a": 1}, b"\xff\x00", "zürich"]


async def test_undecodable_payloads_raise_decode_error_with_the_field() -> None:
    async def typed(p: Payment) -> None:
        raise AssertionError("must not be called")

    invoke = bind_handler(typed, lambda: POOL)
    with pytest.raises(DecodeError, match="amount"):
        await invoke(msg(b'{"order_id": "o-1", "amount": "lots"}'))
    with pytest.raises(DecodeError, match="Invalid JSON"):
        await invoke(msg(b"not json"))


async def test_sync_handlers_run_off_the_event_loop() -> None:
    threads: list[int] = []

    def handler(d: dict[str, int]) -> None:
        threads.append(threading.get_ident())

    await bind_handler(handler, lambda: POOL)(msg(b"{}"))
    assert threads and threads[0] != threading.get_ident()


@pytest.mark.parametrize(
    ("source", "match"),
    [
        ("async def h() -> None: ...", "takes no parameters"),
        ("async def h(p) -> None: ...", "no type hint"),
        ("async def h(p: dict, other: int) -> None: ...", "second parameter 'other'"),
        ("async def h(p: dict, m: Message, extra: int) -> None: ...", "extra"),
    ],
)
def test_unsupported_signatures_fail_at_declaration(source: str, match: str) -> None:
    namespace: dict[str, object] = {"Message": Message}
    exec(source, namespace)
    with pytest.raises(HandlerSignatureError, match=match):
        check_handler(namespace["h"])  # type: ignore[arg-type]


async def test_timeout_fails_a_slow_handler_but_not_its_own_timeout_errors() -> None:
    async def slow(m: Message) -> None:
        await asyncio.sleep(5)

    async def own(m: Message) -> None:
        raise TimeoutError("upstream timed out")

    link = with_timeout(0.05)
    spec = ConsumerSpec(name="c", topic="t", group="g", handler=slow)
    with pytest.raises(TimeoutError, match=r"longer than 0\.05s"):
        await link(spec, bind_handler(slow, lambda: POOL))(msg(b""))
    with pytest.raises(TimeoutError, match="upstream timed out"):
        await link(spec, bind_handler(own, lambda: POOL))(msg(b""))
