"""HTTP latency of a read route, idle and while a consumer drains a backlog in the same process.

The service runs under uvicorn in its own process, as in production: an
order read route answering from the state the consumer keeps, and a
consumer of ~200-byte order events decoded into a pydantic model. This
process is the client: it times one request at a time over a kept-alive
connection, first with nothing to consume, then while the consumer works
through a backlog at full speed, and reports p50, p99 and their ratios.
Target: p99 under consumption load at most 3x the idle p99.

The consumer is paused while the backlog is published (publishing is CPU
work on the same loop), then let loose; the backlog is sized to outlast the
timing, and the row says so if it did not.

``python -m bench.http [--broker memory|sqlite] [-n REQUESTS] [--backlog N]``
(``python -m bench.http serve PORT BROKER_URL`` is the server side).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, HTTPException
from rich.console import Console

from bench.events import OrderEvent, order_events
from millstream import Millstream
from millstream.web import api_group

TARGET_RATIO = 3.0
PUBLISH_CHUNK = 5000
Row = dict[str, Any]


# -- the server ----------------------------------------------------------------


def make_app(broker_url: str) -> FastAPI:
    """The order service: a pydantic consumer and the read route it feeds."""
    ms = Millstream(broker_url)
    orders: dict[str, str] = {}
    handled = 0

    @ms.consumer("orders", group="bench", concurrency=8)
    async def on_order(event: OrderEvent) -> None:
        nonlocal handled
        orders[event.order_id] = event.status
        handled += 1

    app = ms.fastapi(title="bench")
    v1 = api_group(ms, 1)

    @v1.get("/orders/{order_id}")
    async def order(order_id: str) -> dict[str, str]:
        status = orders.get(order_id)
        if status is None:
            raise HTTPException(404, f"no order {order_id!r}")
        return {"id": order_id, "status": status}

    @v1.post("/bench/backlog")
    async def backlog(n: int, start: int = 0) -> dict[str, int]:
        """Publish ``n`` events with the consumer paused, then let it loose on them.

        Publishing is CPU work on this loop too; done first, the timing
        afterwards sees only the consumer.
        """
        consumer = ms.consumers["on_order"]
        consumer.pause()
        for first in range(start, start + n, PUBLISH_CHUNK):
            count = min(PUBLISH_CHUNK, start + n - first)
            await ms.publish_batch("orders", order_events(first, count))
        consumer.resume()
        return {"published": n}

    @v1.get("/bench/progress")
    async def progress() -> dict[str, int]:
        return {"handled": handled}

    app.include_router(v1)
    return app


def serve(port: int, broker_url: str) -> None:
    import uvicorn

    uvicorn.run(make_app(broker_url), host="127.0.0.1", port=port, log_level="warning")


# -- the client ----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def percentile(samples: list[float], q: float) -> float:
    return statistics.quantiles(samples, n=1000, method="inclusive")[round(q * 1000) - 1]


async def timed_reads(http: httpx.AsyncClient, count: int) -> list[float]:
    """Milliseconds of ``count`` sequential reads of the read route."""
    timings = []
    clock = time.perf_counter
    for i in range(count):
        started = clock()
        response = await http.get(f"/api/v1/orders/o-{i % 1000:08d}")
        timings.append((clock() - started) * 1000)
        if response.status_code != 200:
            raise RuntimeError(f"read answered {response.status_code}: {response.text}")
    return timings


async def handled(http: httpx.AsyncClient) -> int:
    count: int = (await http.get("/api/v1/bench/progress")).json()["handled"]
    return count


async def until_handled(http: httpx.AsyncClient, count: int) -> None:
    """Poll the server until its consumer has handled ``count`` messages."""
    while True:
        if await handled(http) >= count:
            return
        await asyncio.sleep(0.05)


async def measure(base: str, requests: int, backlog: int) -> Row:
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        deadline = time.monotonic() + 30
        while True:
            try:
                if (await http.get("/health/ready")).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the bench server never became ready")
            await asyncio.sleep(0.05)

        # Orders the read route can find; consumed before anything is timed.
        await http.post("/api/v1/bench/backlog", params={"n": 1000})
        await until_handled(http, 1000)
        await timed_reads(http, 300)  # warm-up
        idle = await timed_reads(http, requests)

        started = time.perf_counter()
        await http.post("/api/v1/bench/backlog", params={"n": backlog, "start": 1000})
        before = await handled(http)
        consuming_started = time.perf_counter()
        loaded = await timed_reads(http, requests)
        window = time.perf_counter() - consuming_started
        after = await handled(http)
        drained = after - 1000 >= backlog
        await until_handled(http, 1000 + backlog)
        total = time.perf_counter() - started

    return {
        "requests": requests,
        "idle_p50_ms": percentile(idle, 0.50),
        "idle_p99_ms": percentile(idle, 0.99),
        "load_p50_ms": percentile(loaded, 0.50),
        "load_p99_ms": percentile(loaded, 0.99),
        "consumed_during_msgs_s": (after - before) / window,
        "backlog": backlog,
        "backlog_drained_early": drained,
        "publish_and_consume_seconds": total,
    }


def run(broker: str = "memory", requests: int = 1000, backlog: int = 400_000) -> Row:
    """One measurement against a fresh server process; returns the row."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="millstream-bench-http-") as workdir:
        url = "memory://" if broker == "memory" else f"sqlite:///{workdir}/bench.db"
        server = subprocess.Popen(
            [sys.executable, "-m", "bench.http", "serve", str(port), url],
            cwd=Path(__file__).resolve().parent.parent,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            row = asyncio.run(measure(f"http://127.0.0.1:{port}", requests, backlog))
        finally:
            server.terminate()
            server.wait(timeout=60)
    row["broker"] = broker
    row["p50_ratio"] = row["load_p50_ms"] / row["idle_p50_ms"]
    row["p99_ratio"] = row["load_p99_ms"] / row["idle_p99_ms"]
    row["ok"] = row["p99_ratio"] <= TARGET_RATIO and not row["backlog_drained_early"]
    return row


def describe(row: Row) -> str:
    return (
        f"HTTP read route, {row['requests']:,} sequential requests, {row['broker']} broker: "
        f"idle p50 {row['idle_p50_ms']:.2f} ms, p99 {row['idle_p99_ms']:.2f} ms; "
        f"while consuming {row['consumed_during_msgs_s']:,.0f} msgs/s: "
        f"p50 {row['load_p50_ms']:.2f} ms, p99 {row['load_p99_ms']:.2f} ms; "
        f"ratio p50 {row['p50_ratio']:.2f}x, p99 {row['p99_ratio']:.2f}x "
        f"(target p99 <= {TARGET_RATIO:.0f}x)"
        + (" [backlog ran out before the timing ended]" if row["backlog_drained_early"] else "")
    )


def report(console: Console, requests: int) -> None:
    """The row ``python -m bench`` prints: the memory broker, the hardest on the loop."""
    console.print(f"running http latency, {requests:,} reads idle and consuming ...", style="dim")
    row = run("memory", requests)
    colour = "green" if row["ok"] else "red"
    console.print(f"[{colour}]{describe(row)}[/]")


def main() -> None:
    if sys.argv[1:2] == ["serve"]:
        serve(int(sys.argv[2]), sys.argv[3])
        return
    parser = argparse.ArgumentParser(prog="python -m bench.http")
    parser.add_argument("--broker", choices=("memory", "sqlite"), default="memory")
    parser.add_argument("-n", type=int, default=1000, help="timed requests per phase")
    parser.add_argument("--backlog", type=int, default=400_000, help="messages to consume")
    parser.add_argument("--json", action="store_true", help="print the row as JSON")
    args = parser.parse_args()
    row = run(args.broker, args.n, args.backlog)
    print(json.dumps(row) if args.json else describe(row))


if __name__ == "__main__":
    main()
