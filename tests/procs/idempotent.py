"""An idempotent consumer that dies right after its first commit, before the ack.

Usage: ``python -m tests.procs.idempotent BROKER_URL STORE_URL TOPIC CRASH``.
With CRASH=1 the process exits (``os._exit``: no ack, no cleanup) as soon as
the first handler's transaction has committed; with CRASH=0 it serves until
SIGTERM.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys

from millstream import Millstream, Transaction


def main() -> None:
    broker_url, store_url, topic, crash = sys.argv[1:5]
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    ms = Millstream(broker_url, store_url=store_url, settle_interval=0.01, drain_timeout=5)
    ms.store.schema("CREATE TABLE IF NOT EXISTS effects (n INTEGER NOT NULL)")

    @ms.consumer(topic, group="effects", idempotent=True)
    async def apply(n: int, tx: Transaction) -> None:
        await tx.execute("INSERT INTO effects (n) VALUES ($1)", n)
        if crash == "1":
            tx.after_commit(lambda: os._exit(9))

    asyncio.run(ms.serve())


if __name__ == "__main__":
    main()
