"""What dependencies in handlers cost per message.

``python -m bench.dependencies [N] [RUNS]`` prints, for a handler with one
dependency of each kind, the microseconds per message it takes over the same
handler without: through the whole runtime on the memory broker (N messages
published, then consumed), and for the handler call alone (the innermost
link, N calls). Each figure is the best of RUNS runs, the variants taking
turns so that drift in the machine's speed spreads over all of them.
"""

from __future__ import annotations

import asyncio
import functools
import sys
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any

from millstream import Depends, Message, Millstream
from millstream.runtime.handler import bind_handler

CHUNK = 5000


async def one() -> int:
    return 1


async def one_yielded() -> AsyncIterator[int]:
    yield 1


def one_in_a_thread() -> int:
    return 1


async def none(event: dict[str, int]) -> None:
    pass


async def plain(event: dict[str, int], value: Annotated[int, Depends(one)]) -> None:
    pass


async def yielded(event: dict[str, int], value: Annotated[int, Depends(one_yielded)]) -> None:
    pass


async def threaded(event: dict[str, int], value: Annotated[int, Depends(one_in_a_thread)]) -> None:
    pass


VARIANTS: dict[str, Callable[..., Any]] = {
    "no dependency": none,
    "one async def dependency": plain,
    "one async def dependency that yields": yielded,
    "one plain def dependency (thread)": threaded,
}


async def through_the_runtime(handler: Callable[..., Any], n: int) -> float:
    """Seconds per message for ``n`` waiting messages to be handled on the memory broker."""
    ms = Millstream("memory://")
    await ms.broker.connect()
    for start in range(0, n, CHUNK):
        await ms.publish_batch("bench", [{"n": i} for i in range(start, min(n, start + CHUNK))])
    done = asyncio.Event()
    count = 0

    @functools.wraps(handler)  # keeps the signature, dependencies included
    async def counted(*args: Any, **kwargs: Any) -> None:
        nonlocal count
        await handler(*args, **kwargs)
        count += 1
        if count >= n:
            done.set()

    ms.consumer("bench", group="bench", name="bench", concurrency=8)(counted)
    started = time.perf_counter()
    async with ms:
        await done.wait()
        elapsed = time.perf_counter() - started
    return elapsed / n


async def the_call_alone(handler: Callable[..., Any], n: int) -> float:
    """Seconds per call of the innermost link (decode, resolve, call)."""
    pool = ThreadPoolExecutor(1)
    invoke = bind_handler(handler, lambda: pool)
    message = Message(id="m", topic="bench", payload=b'{"n": 1}')
    started = time.perf_counter()
    for _ in range(n):
        await invoke(message)
    elapsed = time.perf_counter() - started
    pool.shutdown()
    return elapsed / n


async def best(
    measure: Callable[[Callable[..., Any], int], Any], n: int, runs: int
) -> dict[str, float]:
    """The best seconds per message of each variant over ``runs`` turns."""
    results: dict[str, float] = {}
    for _ in range(runs):
        for name, handler in VARIANTS.items():
            seconds = await measure(handler, n)
            results[name] = min(results.get(name, seconds), seconds)
    return results


def report(title: str, results: dict[str, float]) -> None:
    base = results["no dependency"]
    print(f"\n{title}")
    for name, seconds in results.items():
        extra = "" if seconds is base else f"  (+{(seconds - base) * 1e6:.2f} µs)"
        print(f"  {name:<40} {seconds * 1e6:8.2f} µs/message{extra}")


async def main(n: int, runs: int) -> None:
    report(
        f"through the runtime, memory broker, {n:,} messages, best of {runs}",
        await best(through_the_runtime, n, runs),
    )
    report(
        f"the handler call alone, {n:,} calls, best of {runs}",
        await best(the_call_alone, n, runs),
    )


if __name__ == "__main__":
    arguments = [int(each) for each in sys.argv[1:3]]
    asyncio.run(main(*(arguments + [50_000, 5][len(arguments) :])))
