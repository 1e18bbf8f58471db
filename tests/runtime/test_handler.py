from __future__ import annotations

import asyncio
import inspect
import itertools
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from pydantic import BaseModel

from millstream import DecodeError, Message, Millstream, Transaction
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


async def test_a_handler_without_dependencies_is_called_directly() -> None:
    """No wrapper coroutine per message: the invocation is the handler's own coroutine."""

    async def plain(p: Payment) -> None:
        pass

    async def with_envelope(p: Payment, m: Message) -> None:
        pass

    for handler in (plain, with_envelope):
        call = bind_handler(handler, lambda: POOL)(msg(b'{"order_id": "o-1", "amount": 5}'))
        assert inspect.iscoroutine(call) and call.cr_code is handler.__code__
        await call


@pytest.mark.parametrize(
    ("source", "match"),
    [
        ("async def h() -> None: ...", "takes no parameters"),
        ("async def h(p) -> None: ...", "no type hint"),
        ("async def h(p: dict, other: int) -> None: ...", r"required parameters \['other'\]"),
        ("async def h(p: dict, m: Message, extra: int) -> None: ...", "extra"),
        ("async def h(m: Message, n: Message) -> None: ...", "keep one"),
        ("async def h(p: dict, o: int = 1, m: Message = None, /) -> None: ...", "positional-only"),
        ("def h(p: dict, tx: Transaction) -> None: ...", "plain def"),
        ("async def h(*, tx: Transaction) -> None: ...", "no parameter for the payload"),
    ],
)
def test_unsupported_signatures_fail_at_declaration(source: str, match: str) -> None:
    namespace: dict[str, object] = {"Message": Message, "Transaction": Transaction}
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


_PARAMETERS = {"data": "data: bytes", "msg": "msg: Message", "tx": "tx: Transaction"}
_SIGNATURES = [
    order
    for size in (1, 2, 3)
    for order in itertools.permutations(_PARAMETERS, size)
    if "data" in order
] + [("msg",), ("data", "*", "msg", "tx"), ("*", "tx", "data")]


@pytest.mark.parametrize("order", _SIGNATURES, ids=lambda order: ", ".join(order))
async def test_parameters_are_bound_by_type_in_any_order(
    order: tuple[str, ...], tmp_path: Path
) -> None:
    ms = Millstream("memory://", store_url=f"sqlite:///{tmp_path}/state.db", poll_timeout=0.05)
    got: dict[str, object] = {}
    source = "async def handle({}) -> None:\n    got.update(locals())".format(
        ", ".join(_PARAMETERS.get(name, name) for name in order)
    )
    namespace: dict[str, object] = {"Message": Message, "Transaction": Transaction, "got": got}
    exec(source, namespace)
    ms.consumer("t")(namespace["handle"])  # type: ignore[arg-type]

    async with ms:
        await ms.publish("t", b"\x01payload")
        for _ in range(400):
            if got:
                break
            await asyncio.sleep(0.005)

    if "data" in order:
        assert got["data"] == b"\x01payload"
    envelope = got["msg"] if "msg" in order else None
    if envelope is not None:
        assert isinstance(envelope, Message) and envelope.payload == b"\x01payload"
    if "tx" in order:
        assert isinstance(got["tx"], Transaction)
