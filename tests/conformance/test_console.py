"""The console's API calls against each broker: consumers, history, reasons, a letter's
detail, replaying a reason and purging one, on letters a failing handler produced."""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from millstream import FatalError, Millstream, Retry
from millstream.web.history import ThroughputHistory
from tests.conformance.factory import BrokerFactory, group_of, needs
from tests.support import until, until_equal
from tests.web import SECRET, bearer, serving


class Healed:
    now = False


async def reasons(http: httpx.AsyncClient, base: str) -> dict[str, int]:
    page = (await http.get(f"{base}/dead-letters/reasons")).json()
    return {group["reason"]: group["count"] for group in page["reasons"]}


async def test_the_console_reads_and_acts_on_each_broker(
    brokers: BrokerFactory, topic: str
) -> None:
    needs(brokers, "replay", "a replay from the console")
    ms = Millstream(broker=brokers.open(), jwt_secret=SECRET, poll_timeout=0.2)
    ms.web.history = ThroughputHistory(bucket=0.2, window=30.0)
    healed = Healed()
    handled: list[int] = []

    @ms.consumer(topic, name="payments", group=group_of(topic), retry=Retry(attempts=1))
    async def payments(event: dict[str, Any]) -> None:
        n = event["n"]
        if not healed.now:
            if n < 4:
                raise FatalError(f"payment {n} refers to no order")
            raise ValueError(f"card {n} declined")
        handled.append(n)

    base = "/admin/consumers/payments"
    async with serving(ms.fastapi()) as http:
        http.headers.update(bearer())
        await ms.publish_batch(topic, [{"n": n, "order": {"id": f"o-{n}"}} for n in range(6)])

        async def letters_in_queue() -> int | None:
            [view] = (await http.get("/admin/consumers")).json()
            count: int | None = view["dead_letters"]
            return count

        await until_equal(letters_in_queue, 6, within=15)
        [view] = (await http.get("/admin/consumers")).json()
        assert (view["state"], view["dead"], view["group"]) == ("RUNNING", 6, group_of(topic))
        assert (view["last_error"]["type"], view["last_error"]["source"]) == (
            "ValueError",
            "handler",
        )

        samples = len(ms.web.history.samples)
        await until(lambda: len(ms.web.history.samples) > samples, within=5)
        history = (await http.get("/admin/consumers/history")).json()
        assert sum(history["consumers"]["payments"]["dead"]) == 6
        assert sum(history["consumers"]["payments"]["consumed"]) == 6

        assert await reasons(http, base) == {"FatalError": 4, "attempts exhausted: ValueError": 2}
        page = (await http.get(f"{base}/dead-letters", params={"reason": "FatalError"})).json()
        assert page["total"] == 4
        letter = (await http.get(f"{base}/dead-letters/{page['items'][0]['id']}")).json()
        n = orjson.loads(letter["payload"])["n"]
        assert letter["error"] == f"FatalError: payment {n} refers to no order"
        assert f'"id": "o-{n}"' in letter["payload_json"]
        assert letter["attempts"] == 1

        healed.now = True
        replayed = await http.post(f"{base}/dead-letters/replay", json={"reason": "FatalError"})
        assert replayed.json() == {"replayed": 4}
        await until(lambda: sorted(handled) == [0, 1, 2, 3], within=15)

        reason = {"reason": "attempts exhausted: ValueError"}
        purged = await http.post(f"{base}/dead-letters/purge", json=reason)
        assert purged.json() == {"purged": 2}
        assert await reasons(http, base) == {}
        assert sorted(handled) == [0, 1, 2, 3]
