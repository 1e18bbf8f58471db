"""Dependencies in handlers, the FastAPI way, on the memory broker: providers and their
sub-dependencies, cleanup after ``yield``, the per-message cache, overrides, what providers
take from context, and the signatures refused when a consumer is declared."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Annotated, Any

import pytest
from fastapi import Depends as FastAPIDepends

from millstream import Depends, Message, Retry, Router, Settings, Transaction
from millstream.errors import HandlerSignatureError
from tests.app.support import app
from tests.support import until

# The providers live at module level, as in an application; they note what they do here.
noted: list[str] = []


@pytest.fixture(autouse=True)
def _fresh_calls() -> Iterator[None]:
    noted.clear()
    yield
    noted.clear()


class Db:
    pass


class Repo:
    def __init__(self, db: Db, config: dict[str, str]) -> None:
        self.db = db
        self.config = config


async def get_db() -> Db:
    noted.append("db")
    return Db()


def get_config() -> dict[str, str]:
    noted.append("config")
    return {"currency": "EUR"}


async def get_repo(
    db: Annotated[Db, Depends(get_db)], config: Annotated[dict[str, str], Depends(get_config)]
) -> Repo:
    noted.append("repo")
    return Repo(db, config)


async def session() -> AsyncIterator[str]:
    noted.append("open")
    try:
        yield "session"
    except Exception as exc:
        noted.append(f"rollback: {exc}")
        raise
    else:
        noted.append("commit")
    finally:
        noted.append("close")


def sync_resource() -> Iterator[str]:
    noted.append("sync open")
    try:
        yield "resource"
    finally:
        noted.append("sync close")


async def forgiving() -> AsyncIterator[None]:
    try:
        yield
    except ValueError as exc:
        noted.append(f"swallowed: {exc}")


async def test_sub_dependencies_resolve_and_a_provider_runs_once_per_message() -> None:
    ms = app()
    seen: list[tuple[Repo, Db]] = []

    @ms.consumer("orders")
    async def handle(
        event: dict[str, int], repo: Annotated[Repo, Depends(get_repo)], db: Db = Depends(get_db)
    ) -> None:
        seen.append((repo, db))

    async with ms:
        await ms.publish("orders", {"n": 1})
        await ms.publish("orders", {"n": 2})
        await until(lambda: len(seen) == 2)

    (first, first_db), (second, second_db) = seen
    assert first.db is first_db and second.db is second_db  # one Db per message, shared in it
    assert first_db is not second_db
    assert first.config == {"currency": "EUR"}  # a plain def provider, under an async one
    assert sorted(noted) == sorted(["db", "config", "repo"] * 2)


async def fresh() -> object:
    noted.append("fresh")
    return object()


async def holder(value: Annotated[object, Depends(fresh, use_cache=False)]) -> object:
    return value


async def test_use_cache_false_calls_the_provider_for_every_parameter_requiring_it() -> None:
    ms = app()
    seen: list[tuple[object, object]] = []

    @ms.consumer("orders")
    async def handle(
        event: dict[str, int],
        own: Annotated[object, Depends(fresh, use_cache=False)],
        held: Annotated[object, Depends(holder)],
    ) -> None:
        seen.append((own, held))

    async with ms:
        await ms.publish("orders", {"n": 1})
        await until(lambda: len(seen) == 1)

    assert seen[0][0] is not seen[0][1] and noted == ["fresh", "fresh"]


async def test_yield_dependencies_are_cleaned_up_after_the_handler_and_before_the_ack() -> None:
    ms = app()

    @ms.consumer("orders")
    async def handle(
        event: dict[str, int],
        db: Annotated[str, Depends(session)],
        resource: Annotated[str, Depends(sync_resource)],
    ) -> None:
        noted.append(f"handled with {db} and {resource}")

    async with ms:
        await ms.publish("orders", {"n": 1})
        await until(lambda: ms.consumers["handle"].stats.acked == 1)
        # Acked only once both cleanups ran, the last one entered first.
        assert noted == [
            "open",
            "sync open",
            "handled with session and resource",
            "sync close",
            "commit",
            "close",
        ]


async def test_a_failure_reaches_the_yield_dependency_and_the_message_is_retried() -> None:
    ms = app()

    @ms.consumer("orders", retry=Retry(attempts=3, backoff=0.01, jitter=0))
    async def handle(
        event: dict[str, int], msg: Message, db: Annotated[str, Depends(session)]
    ) -> None:
        noted.append(f"attempt {msg.attempt}")
        if msg.attempt == 1:
            raise ValueError("card declined")

    async with ms:
        await ms.publish("orders", {"n": 1})
        await until(lambda: ms.consumers["handle"].stats.acked == 1)

    assert noted == [
        *("open", "attempt 1", "rollback: card declined", "close"),
        *("open", "attempt 2", "commit", "close"),
    ]
    assert ms.consumers["handle"].stats.retried == 1


async def test_a_cleanup_that_swallows_the_failure_has_the_message_acked() -> None:
    """As with any context manager, and in FastAPI: not re-raising means handled."""
    ms = app()

    @ms.consumer("orders", retry=Retry(attempts=3, backoff=0.01, jitter=0))
    async def handle(event: dict[str, int], _: Annotated[None, Depends(forgiving)]) -> None:
        raise ValueError("ignored")

    async with ms:
        await ms.publish("orders", {"n": 1})
        await until(lambda: ms.consumers["handle"].stats.acked == 1)

    assert noted == ["swallowed: ignored"] and ms.consumers["handle"].stats.retried == 0


async def test_a_plain_def_handler_gets_async_and_sync_dependencies() -> None:
    ms = app()
    seen: list[Repo] = []

    @ms.consumer("orders")
    def handle(event: dict[str, int], repo: Annotated[Repo, Depends(get_repo)]) -> None:
        seen.append(repo)

    async with ms:
        await ms.publish("orders", {"n": 1})
        await until(lambda: len(seen) == 1)

    assert isinstance(seen[0].db, Db) and seen[0].config == {"currency": "EUR"}


def config_from_the_key(msg: Message) -> dict[str, str]:
    return {"currency": msg.key or "?"}


async def test_overrides_replace_a_provider_wherever_it_is_required_from_the_next_start() -> None:
    ms = app()
    seen: list[tuple[Repo, Db]] = []

    @ms.consumer("orders")
    async def handle(
        event: dict[str, int],
        repo: Annotated[Repo, Depends(get_repo)],
        db: Annotated[Db, Depends(get_db)],
    ) -> None:
        seen.append((repo, db))

    fake = Db()
    ms.dependency_overrides[get_db] = lambda: fake
    ms.dependency_overrides[get_config] = config_from_the_key  # takes what the original did not
    async with ms:
        ms.dependency_overrides.clear()  # read at start: the running consumer keeps them
        await ms.publish("orders", {"n": 1}, key="CHF")
        await until(lambda: len(seen) == 1)
    assert seen[0][0].db is fake and seen[0][1] is fake
    assert seen[0][0].config == {"currency": "CHF"} and "db" not in noted

    async with ms:  # started again without overrides
        await ms.publish("orders", {"n": 2})
        await until(lambda: len(seen) == 2)
    assert seen[1][1] is not fake and seen[1][0].config == {"currency": "EUR"}


class Ledger:
    def __init__(self, tx: Transaction, msg: Message, settings: Settings) -> None:
        self.tx, self.msg, self.settings = tx, msg, settings

    async def record(self) -> None:
        await self.tx.execute(
            "INSERT INTO entries (id, prefetch) VALUES ($1, $2)",
            self.msg.id,
            self.settings.prefetch,
        )


async def get_ledger(tx: Transaction, msg: Message, settings: Settings) -> Ledger:
    return Ledger(tx, msg, settings)


async def test_providers_take_the_message_the_transaction_and_the_settings(
    tmp_path: Path,
) -> None:
    ms = app(store_url=f"sqlite:///{tmp_path}/state.db", prefetch=17)
    ms.store.schema("CREATE TABLE IF NOT EXISTS entries (id TEXT, prefetch INTEGER)")

    @ms.consumer("orders", retry=Retry(attempts=3, backoff=0.01, jitter=0))
    async def handle(event: dict[str, int], ledger: Annotated[Ledger, Depends(get_ledger)]) -> None:
        await ledger.record()  # in the consumer's transaction: the handler takes none itself
        if ledger.msg.attempt == 1:
            raise ValueError("rolled back")

    shared: list[bool] = []

    @ms.consumer("orders", name="both")
    async def both(
        event: dict[str, int], tx: Transaction, ledger: Annotated[Ledger, Depends(get_ledger)]
    ) -> None:
        shared.append(ledger.tx is tx)

    async with ms:
        message_id = await ms.publish("orders", {"n": 1})
        await until(lambda: ms.consumers["handle"].stats.acked == 1 and shared == [True])
        rows = await ms.store.fetch("SELECT id, prefetch FROM entries")
    assert rows == [{"id": message_id, "prefetch": 17}]  # the failed attempt's row rolled back


async def needs_a_user(user_id: str) -> str:
    return user_id


def sync_with_a_transaction(tx: Transaction) -> None:
    pass


async def ping(back: Annotated[int, Depends(pong)]) -> int:
    return back


async def pong(forth: Annotated[int, Depends(ping)]) -> int:
    return forth


async def text(msg: Message) -> str:
    return msg.payload.decode()


async def shadowing(msg: Annotated[str, Depends(text)]) -> str:
    return msg


class Maker:
    async def __call__(self, db: Annotated[Db, Depends(get_db)]) -> str:
        return "made"


maker = Maker()


def refused() -> list[tuple[Any, str]]:
    """Handlers whose dependencies cannot be resolved, and what the error must say."""

    async def unfillable(
        event: dict[str, int], user: Annotated[str, Depends(needs_a_user)]
    ) -> None:
        pass

    async def sync_tx(
        event: dict[str, int], _: Annotated[None, Depends(sync_with_a_transaction)]
    ) -> None:
        pass

    async def circular(event: dict[str, int], value: Annotated[int, Depends(ping)]) -> None:
        pass

    async def fastapis(event: dict[str, int], db: Annotated[Db, FastAPIDepends(get_db)]) -> None:
        pass

    async def clash(
        event: dict[str, int],
        a: Annotated[str, Depends(shadowing)],
        b: Annotated[str, Depends(text)],
    ) -> None:
        pass

    async def cached_both_ways(
        event: dict[str, int],
        cached: Annotated[object, Depends(fresh)],
        held: Annotated[object, Depends(holder)],
    ) -> None:
        pass

    async def from_an_object(event: dict[str, int], made: Annotated[str, Depends(maker)]) -> None:
        pass

    async def positional(event: dict[str, int], db: Annotated[Db, Depends(get_db)], /) -> None:
        pass

    return [
        (
            unfillable,
            r"dependency needs_a_user of handler .*unfillable: parameter 'user_id' "
            r"cannot be filled",
        ),
        (
            sync_tx,
            r"parameter 'tx' is a Transaction, but sync_with_a_transaction is a plain def; "
            r"make it `async def`",
        ),
        (circular, r"require each other in a circle \(ping -> pong -> ping\)"),
        (fastapis, r"parameter 'db' uses FastAPI's Depends; .*`from millstream import Depends`"),
        (
            clash,
            r"parameter name 'msg' stands for the result of text in dependency shadowing .* but "
            r"stands for the Message in dependency text",
        ),
        (positional, r"parameter 'db' has a Depends but is positional-only"),
        (cached_both_ways, r"fresh is required both cached and with use_cache=False"),
        (from_an_object, r"cannot read the Depends of parameter 'db' of Maker, a callable object"),
    ]


@pytest.mark.parametrize(
    ("handler", "says"), refused(), ids=lambda each: getattr(each, "__name__", "")
)
def test_a_signature_that_cannot_be_resolved_fails_when_declared(handler: Any, says: str) -> None:
    ms = app()
    with pytest.raises(HandlerSignatureError, match=says):
        ms.consumer("orders")(handler)
    assert "orders" not in {spec.topic for spec in ms.specs.values()}


async def config_from_a_transaction(tx: Transaction) -> dict[str, str]:
    return {}


async def test_an_override_the_consumer_cannot_run_fails_the_start_before_anything_opens() -> None:
    ms = app()

    @ms.consumer("orders")
    async def handle(event: dict[str, int], repo: Annotated[Repo, Depends(get_repo)]) -> None:
        pass

    ms.dependency_overrides[get_config] = config_from_a_transaction
    with pytest.raises(HandlerSignatureError, match=r"override .* takes a Transaction"):
        await ms.start()
    assert not ms.started and ms.opened_store is None

    ms.dependency_overrides[get_config] = needs_a_user
    with pytest.raises(HandlerSignatureError, match=r"needs_a_user .* parameter 'user_id'"):
        await ms.start()
    assert not ms.started

    ms.dependency_overrides[get_config] = {"currency": "EUR"}  # type: ignore[assignment]
    with pytest.raises(HandlerSignatureError, match=r"\[get_config\] = .* is not callable"):
        await ms.start()
    assert not ms.started


class Service:
    """A class as a provider: its ``__init__`` parameters are resolved like a function's."""

    def __init__(self, db: Annotated[Db, Depends(get_db)], currency: str = "EUR") -> None:
        self.db, self.currency = db, currency


async def test_router_consumers_with_publishes_get_dependencies_and_the_apps_overrides() -> None:
    router = Router()

    @router.consumer("orders", publishes="receipts")
    async def receipt(
        event: dict[str, int], service: Annotated[Service, Depends(Service)]
    ) -> dict[str, Any]:
        return {"n": event["n"], "currency": service.currency, "fake_db": service.db is fake}

    ms = app()
    ms.include_router(router, prefix="shop.")
    out: list[Message] = []

    @ms.consumer("shop.receipts")
    async def collect(message: Message) -> None:
        out.append(message)

    fake = Db()
    ms.dependency_overrides[get_db] = lambda: fake
    async with ms:
        await ms.publish("shop.orders", {"n": 1})
        await until(lambda: len(out) == 1)
    assert out[0].payload == b'{"n":1,"currency":"EUR","fake_db":true}'
