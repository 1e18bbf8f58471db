"""The console in a real headless Chromium, against a running order service.

The order service runs on the embedded SQLite broker under uvicorn, with
the payment simulator poisoning every third payment event, so dead letters
of several reasons pile up. The test signs in as an operator would, pauses
a consumer, fixes an order and replays the letter that failed on it, purges
a reason after the confirmation, and looks at each view at desktop and
phone width. A second test measures page weight and how long 50 consumers
take to show.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from examples.orders import build
from examples.orders.simulator import PaymentSimulator
from millstream import Millstream
from millstream.demo import dev_token, with_simulator
from millstream.web.console import ASSETS
from millstream.web.history import ThroughputHistory
from tests.conftest import report
from tests.web import SECRET
from tests.web.browser import DOCS_SCREENSHOT, chrome, served, wait_for

pytestmark = pytest.mark.slow

SHIPPED_TOO_EARLY = "'shipped' cannot move an order from CREATED to SHIPPED"


def order_service(tmp_path: Path) -> tuple[Any, str]:
    """The order service with the simulator, on SQLite under ``tmp_path``; and its broker URL."""
    broker_url = f"sqlite:///{tmp_path}/broker.db"
    service = build(
        broker_url=broker_url,
        store_url=f"sqlite:///{tmp_path}/state.db",
        jwt_secret=SECRET,
        poll_timeout=0.1,
    )
    service.ms.web.history = ThroughputHistory(bucket=1.0, window=600.0)
    simulator = PaymentSimulator(service.ms, rate=10, poison_every=3)
    return with_simulator(service.app, simulator), broker_url


def api(base: str) -> httpx.Client:
    return httpx.Client(
        base_url=base, headers={"Authorization": f"Bearer {dev_token(SECRET)}"}, timeout=30
    )


def shipped_too_early(http: httpx.Client) -> dict[str, Any] | None:
    """A payments letter shipping an order that was never paid: replayable once it is."""
    page = http.get(
        "/admin/consumers/payments/dead-letters",
        params={"reason": "IllegalTransition", "limit": 1000},
    ).json()
    found = [letter for letter in page["items"] if SHIPPED_TOO_EARLY in letter["error"]]
    return found[0] if found else None


def pay(broker_url: str, order: dict[str, Any]) -> None:
    """What the payment provider should have sent: another producer, on the same broker."""

    async def publish() -> None:
        async with Millstream(broker_url) as provider:
            event = {"order_id": order["id"], "kind": "paid", "amount": order["total"]}
            await provider.publish("payments", event, key=order["id"])

    asyncio.run(publish())


def screenshot(driver: Any, path: Path) -> None:
    assert driver.save_screenshot(str(path)), f"no screenshot written to {path}"


def test_an_operator_pauses_replays_and_purges_from_the_console(tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    app, broker_url = order_service(tmp_path)
    with chrome() as driver, served(app) as base, api(base) as http:

        def find(css: str) -> Any:
            return wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, css), what=css)[0]

        def click(css: str) -> None:
            """Click what ``css`` finds, again if a refresh replaced it meanwhile."""
            from selenium.common.exceptions import StaleElementReferenceException

            def clicked() -> bool:
                try:
                    find(css).click()
                except StaleElementReferenceException:
                    return False
                return True

            wait_for(clicked, what=f"click {css}")

        def status() -> str:
            text: str = driver.find_element(By.ID, "status").text
            return text

        letter = wait_for(lambda: shipped_too_early(http), within=60, what="a letter to replay")
        order_id = letter["key"]

        # A refused token goes back to the form, saying why.
        driver.get(f"{base}/console")
        find("#token").send_keys("not-a-token")
        click("#login-form button[type=submit]")
        message = wait_for(lambda: driver.find_element(By.ID, "login-message").text)
        assert "refused the token" in message and "invalid token" in message
        assert not driver.find_element(By.ID, "view-consumers").is_displayed()

        find("#token").send_keys(dev_token(SECRET))
        click("#login-form button[type=submit]")
        for name in ("payments", "notifications", "charge", "ship"):
            find(f'#consumers-body tr[data-consumer="{name}"]')
        assert driver.execute_script("return document.cookie") == ""
        assert "token" not in driver.current_url and "ey" not in driver.current_url

        # Pause the shipping provider from the page: the API says it is paused.
        click('tr[data-consumer="ship"] button[data-action="pause"]')
        find('tr[data-consumer="ship"][data-state="PAUSED"]')
        states = {c["name"]: c["state"] for c in http.get("/admin/consumers").json()}
        assert states["ship"] == "PAUSED"
        assert states["payments"] == "RUNNING"

        # Charts fill a bucket a second; the consumers view with a few of them.
        time.sleep(6)
        driver.refresh()
        find('tr[data-consumer="payments"] svg.spark polyline')
        screenshot(driver, tmp_path / "consumers.png")
        if os.environ.get("MILLSTREAM_UPDATE_SCREENSHOT") == "1":
            shutil.copyfile(tmp_path / "consumers.png", DOCS_SCREENSHOT)

        # The payment arrives late; with shipping paused the order stays paid...
        order = http.get(f"/api/v1/orders/{order_id}").json()
        pay(broker_url, order)
        wait_for(
            lambda: http.get(f"/api/v1/orders/{order_id}").json()["status"] == "PAID",
            what="the order paid",
        )

        # ...so replaying the shipment that came too early ships it.
        click('#nav a[data-view="dead-letters"]')
        Select(find("#dl-consumer")).select_by_value("payments")
        click('#reasons-body tr[data-reason="IllegalTransition"] button[data-action="show"]')
        click(f'#letters-body tr[data-letter="{letter["id"]}"]')
        payload = find("#detail-payload")
        wait_for(lambda: '"kind": "shipped"' in payload.text, what="the pretty payload")
        fields = driver.find_element(By.ID, "detail-fields").text
        assert letter["message_id"] in fields and "Trace id" in fields
        screenshot(driver, tmp_path / "dead-letters.png")
        click("#detail-replay")
        wait_for(lambda: status() == "Replayed 1 letter of payments.", what=status)
        wait_for(
            lambda: http.get(f"/api/v1/orders/{order_id}").json()["status"] == "SHIPPED",
            what="the replayed shipment handled",
        )
        gone = http.get(f"/admin/consumers/payments/dead-letters/{letter['id']}")
        assert gone.status_code == 404

        # Purge a whole reason: the confirmation names how many, and that many go.
        reason = "attempts exhausted: OrderNotFound"
        wait_for(lambda: any(r["reason"] == reason for r in reasons(http)), within=30)
        click("#dl-refresh")
        click(f'#reasons-body tr[data-reason="{reason}"] button[data-action="purge"]')
        dialog = find("#confirm")
        wait_for(dialog.is_displayed, what="the confirmation")
        question = driver.find_element(By.ID, "confirm-text").text
        count = int(question.split()[1])
        assert question.startswith(f"Purge {count} letter") and reason in question
        click("#confirm-ok")
        noun = "letter" if count == 1 else "letters"
        wait_for(lambda: status() == f"Purged {count} {noun} of payments.", what=status)

        # The service view: health components, caches, version.
        click('#nav a[data-view="service"]')
        for component in ("broker", "consumers", "store"):
            find(f'#components-body tr[data-component="{component}"]')
        caches = find("#caches-body").text
        assert "orders" in caches and "%" in caches
        assert "0.1.0" in driver.find_element(By.ID, "service-fields").text
        screenshot(driver, tmp_path / "service.png")

        # A phone: each view fits its width.
        driver.set_window_size(390, 844)
        for view, shown in (
            ("dead-letters", '#reasons-body tr[data-reason="IllegalTransition"]'),
            ("service", '#components-body tr[data-component="store"]'),
            ("consumers", '#consumers-body tr[data-consumer="payments"]'),
        ):
            click(f'#nav a[data-view="{view}"]')
            find(shown)
            if view == "dead-letters":
                click('#reasons-body tr[data-reason="IllegalTransition"] [data-action="show"]')
                click("#letters-body tr[data-letter]")
                find("#letter-detail:not([hidden]) #detail-payload")
            overflow = driver.execute_script(
                "return document.documentElement.scrollWidth - window.innerWidth"
            )
            assert overflow <= 0, f"the {view} view is {overflow}px wider than a phone"
            screenshot(driver, tmp_path / f"{view}-phone.png")


def reasons(http: httpx.Client) -> list[dict[str, Any]]:
    page = http.get("/admin/consumers/payments/dead-letters/reasons").json()
    found: list[dict[str, Any]] = page["reasons"]
    return found


def test_page_weight_and_fifty_consumers_load_time(tmp_path: Path) -> None:
    """The page and its assets, as transferred; then, signed in, the time from navigation
    to 50 consumer rows rendered, as the browser measures it."""
    from selenium.webdriver.common.by import By

    ms = Millstream("memory://", jwt_secret=SECRET, poll_timeout=0.05)
    for n in range(50):

        async def handle(event: dict[str, int]) -> None: ...

        ms.consumer(f"topic-{n}", name=f"consumer-{n:02d}")(handle)

    with chrome() as driver, served(ms.fastapi()) as base:
        driver.execute_cdp_cmd("Network.enable", {})
        driver.execute_cdp_cmd("Network.setCacheDisabled", {"cacheDisabled": True})
        driver.get(f"{base}/console")
        wait_for(lambda: driver.find_element(By.ID, "login").is_displayed())
        sizes: dict[str, int] = driver.execute_script(
            """
            const sizes = {};
            for (const e of performance.getEntriesByType("navigation")) sizes.page = e.transferSize;
            for (const e of performance.getEntriesByType("resource")) {
              sizes[new URL(e.name).pathname] = e.transferSize;
            }
            return sizes;
            """
        )
        assets = {f"/console/{name}" for name in ASSETS if name != "index.html"}
        assert assets <= set(sizes), sizes
        weight = sizes["page"] + sum(sizes[path] for path in assets)
        assert all(size > 0 for size in sizes.values()), sizes

        driver.execute_script(
            "sessionStorage.setItem('millstream.console.token', arguments[0])", dev_token(SECRET)
        )
        driver.get(f"{base}/console#consumers")
        wait_for(
            lambda: len(driver.find_elements(By.CSS_SELECTOR, "#consumers-body tr")) == 50,
            what="50 consumer rows",
        )
        rendered = driver.execute_script(
            "return performance.getEntriesByName('millstream:consumers-rendered')[0].startTime"
        )
    report("console", page_weight_bytes=weight, fifty_consumers_ms=float(rendered))
    assert weight < 200_000, f"the console weighs {weight} bytes"
    assert rendered < 5_000, f"50 consumers took {rendered:.0f} ms to show"
