"""The health model: what ``/health/ready``, ``/health/consumers`` and ``/actuator/health`` answer.

Pure functions of the service's state, so the rules are testable without
HTTP. Statuses are the ones operators know from Spring Boot's actuator:
``UP``, ``DOWN`` and ``OUT_OF_SERVICE``.

Three readings, for three questions:

- **readiness** ("send me HTTP traffic"): started, not shutting down, the
  store answers. A broker outage does not take every instance out of
  traffic at once: writes through the outbox succeed with the broker down.
  ``health_ready_consumers`` adds the consumers' reading, for deployments
  that want it.
- **consumers**: the broker answers a ping and every consumer is running
  (paused counts as running: it is on purpose), its lag under
  ``health_max_lag`` when set. For worker deployments and startup probes.
- **status** (``/actuator/health``): everything together, with details.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

from millstream.brokers.base import Broker, Lag
from millstream.errors import text_of
from millstream.runtime.consumer import ConsumerRuntime, ConsumerState
from millstream.store.base import Store

__all__ = [
    "BrokerReport",
    "ConsumerReport",
    "Health",
    "StoreReport",
    "check_broker",
    "check_store",
    "collect",
    "consumer_status",
]

UP, DOWN, OUT_OF_SERVICE = "UP", "DOWN", "OUT_OF_SERVICE"

_STATUS = {
    ConsumerState.RUNNING: UP,
    ConsumerState.PAUSED: UP,  # paused on purpose: the service is still doing its job
    ConsumerState.STARTING: DOWN,
    ConsumerState.RECONNECTING: DOWN,
    ConsumerState.FAILED: DOWN,
    ConsumerState.STOPPING: OUT_OF_SERVICE,
    ConsumerState.STOPPED: OUT_OF_SERVICE,
}


@dataclass(frozen=True)
class ConsumerReport:
    """One consumer at one moment, with its lag if the broker could tell."""

    consumer: ConsumerRuntime
    lag: Lag | None


def consumer_status(report: ConsumerReport, max_lag: int | None) -> str:
    status = _STATUS[report.consumer.state]
    lag = report.lag
    if status == UP and max_lag is not None and lag is not None and lag.total > max_lag:
        return DOWN
    return status


async def collect(consumers: list[ConsumerRuntime], timeout: float = 1.0) -> list[ConsumerReport]:
    """Each consumer with its lag; a broker that does not answer in time leaves lag unknown."""

    async def one(consumer: ConsumerRuntime) -> ConsumerReport:
        lag = None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                lag = await consumer.lag()
        return ConsumerReport(consumer, lag)

    return list(await asyncio.gather(*(one(c) for c in consumers)))


@dataclass(frozen=True)
class BrokerReport:
    """The broker at one moment: whether it answered a ping, and if not, why."""

    status: str
    error: str | None = None


async def check_broker(broker: Broker, timeout: float = 1.0) -> BrokerReport:
    """Whether ``broker`` answers a ping within ``timeout``."""
    try:
        async with asyncio.timeout(timeout):
            await broker.ping()
    except TimeoutError:
        return BrokerReport(DOWN, f"no answer within {timeout}s")
    except Exception as exc:
        return BrokerReport(DOWN, text_of(exc))
    return BrokerReport(UP)


@dataclass(frozen=True)
class StoreReport:
    """The state store at one moment: answering or not, and its outbox backlog."""

    url: str
    status: str
    outbox_pending: int | None = None
    error: str | None = None


async def check_store(store: Store, url: str, timeout: float = 1.0) -> StoreReport:
    """Whether ``store`` answers a query within ``timeout``; counts the outbox on the way."""
    try:
        async with asyncio.timeout(timeout):
            pending = await store.outbox_pending()
    except TimeoutError:
        return StoreReport(url, DOWN, error=f"no answer within {timeout}s")
    except Exception as exc:
        return StoreReport(url, DOWN, error=f"{type(exc).__name__}: {exc}")
    return StoreReport(url, UP, outbox_pending=pending)


@dataclass(frozen=True)
class Health:
    """The whole service: broker, consumers, store, and whether it is shutting down."""

    broker_url: str
    started: bool
    draining: bool
    reports: list[ConsumerReport]
    max_lag: int | None = None
    store: StoreReport | None = None
    broker: BrokerReport | None = None
    """The broker's ping; without one, the consumers' states say whether it is reachable."""
    consumers_in_readiness: bool = False

    @property
    def readiness(self) -> str:
        """Whether to send this instance HTTP traffic (``/health/ready``)."""
        if self.draining or not self.started:
            return OUT_OF_SERVICE
        statuses = {self.store.status} if self.store is not None else set()
        if self.consumers_in_readiness:
            statuses.add(self.consumers)
        return UP if statuses <= {UP} else DOWN

    @property
    def consumers(self) -> str:
        """The broker answers and every consumer runs (``/health/consumers``)."""
        if self.draining or not self.started:
            return OUT_OF_SERVICE
        statuses = {self.broker_status(), *self.consumer_statuses().values()}
        return UP if statuses <= {UP} else DOWN

    @property
    def status(self) -> str:
        """Everything together (``/actuator/health``)."""
        if self.draining or not self.started:
            return OUT_OF_SERVICE
        statuses = {self.consumers}
        if self.store is not None:
            statuses.add(self.store.status)
        return UP if statuses <= {UP} else DOWN

    def broker_status(self) -> str:
        """The ping's answer; without a ping, DOWN when no consumer can reach the broker."""
        if not self.started:
            return OUT_OF_SERVICE
        if self.broker is not None:
            return self.broker.status
        states = [r.consumer.state for r in self.reports]
        lost = (ConsumerState.RECONNECTING, ConsumerState.FAILED, ConsumerState.STARTING)
        if states and all(state in lost for state in states):
            return DOWN
        return UP

    def consumer_statuses(self) -> dict[str, str]:
        return {r.consumer.name: consumer_status(r, self.max_lag) for r in self.reports}

    def document(self) -> dict[str, Any]:
        """The ``/actuator/health`` body."""
        statuses = self.consumer_statuses()
        consumers: dict[str, Any] = {}
        for report in self.reports:
            consumer = report.consumer
            details: dict[str, Any] = {
                "state": consumer.state.value,
                "topic": consumer.spec.topic,
                "group": consumer.spec.group,
                "lag": report.lag.total if report.lag is not None else None,
                "partitionCount": len(report.lag.partitions) if report.lag is not None else None,
                "lastPollMs": _millis(consumer.stats.last_poll),
                "inflight": consumer.inflight,
                "concurrency": consumer.concurrency,
            }
            if report.lag is not None and report.lag.partitions:
                details["partitions"] = {str(p): n for p, n in report.lag.partitions.items()}
            if consumer.stats.last_error and statuses[consumer.name] != UP:
                details["error"] = consumer.stats.last_error
            consumers[consumer.name] = {"status": statuses[consumer.name], "details": details}
        aggregate = UP if set(statuses.values()) <= {UP} else DOWN
        broker: dict[str, Any] = {"url": self.broker_url}
        if self.broker is not None and self.broker.error is not None:
            broker["error"] = self.broker.error
        components: dict[str, Any] = {
            "broker": {"status": self.broker_status(), "details": broker},
            "consumers": {"status": aggregate, "components": consumers},
        }
        if self.store is not None:
            store: dict[str, Any] = {
                "url": self.store.url,
                "outboxPending": self.store.outbox_pending,
            }
            if self.store.error is not None:
                store["error"] = self.store.error
            components["store"] = {"status": self.store.status, "details": store}
        return {"status": self.status, "components": components}


def _millis(timestamp: float | None) -> int | None:
    return None if timestamp is None else int(timestamp * 1000)
