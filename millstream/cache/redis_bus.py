"""``RedisBus``: cache invalidations between instances over Redis pub/sub.

Each instance publishes ``{"origin", "cache", "keys"}`` (orjson) on its
service's channel, ``millstream:cache:<database>:<service>``, and runs one
subscriber task that applies what the others publish (its own messages,
recognised by ``origin``, are skipped: it dropped those keys before
publishing).

Pub/sub is fire-and-forget: a message published while an instance's
subscription is down never reaches it. So the subscriber clears every
attached cache each time its subscription is (re)confirmed, which covers
whatever it missed, and pings on a timer to notice a connection that died
without closing. Between a loss and the reconnect an instance may serve an
entry that was invalidated meanwhile, for at most the cache's ``ttl``.

The bus never stops the app: Redis unreachable at start is logged and
retried in the background, and a failed ``broadcast`` is logged, kept, and
published again after the next reconnect instead of failing the request
whose write already committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

import orjson
from redis import exceptions as redis_errors
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from millstream.cache.bus import check_cache_url, database_number
from millstream.errors import text_of
from millstream.urls import redact

if TYPE_CHECKING:
    from millstream.cache.read_cache import Cache

__all__ = ["RedisBus"]

log = logging.getLogger("millstream.cache")

CONNECT_TIMEOUT = 2.0
COMMAND_TIMEOUT = 5.0
BROADCAST_TIMEOUT = 2.0
RETRY_MIN, RETRY_MAX = 0.1, 5.0
# Keys remembered per cache while broadcasts fail; past this, the whole cache
# is invalidated on every instance instead (one message, any number of keys).
MAX_UNSENT = 10_000

_REFUSED = ("NOAUTH", "WRONGPASS", "NOPERM")
_Transport = (redis_errors.RedisError, OSError, TimeoutError)


class _Silent(redis_errors.ConnectionError):
    """The server stopped answering pings: the connection is dead though not closed."""


class RedisBus:
    """Invalidations over Redis pub/sub at ``url``; see the module docstring.

    ``service`` names the service whose instances share invalidations; the
    pub/sub ``channel`` also carries the database number of ``url``, since
    Redis delivers a channel's messages to subscribers of every database.

    ``heartbeat`` is how often the subscriber pings: a connection silent for
    three heartbeats counts as lost. ``connected`` tells whether the
    subscription is live right now; ``reconnects`` counts recoveries.
    """

    def __init__(self, url: str, service: str = "millstream", *, heartbeat: float = 5.0) -> None:
        check_cache_url(url)
        self.url = url
        self.channel = f"millstream:cache:{database_number(url)}:{service}"
        self.heartbeat = heartbeat
        self.origin = uuid.uuid4().hex
        self.connected = False
        self.reconnects = 0
        self._caches: dict[str, list[Cache[Any]]] = {}
        self._unsent: dict[str, set[str] | None] = {}  # None: more than MAX_UNSENT keys
        self._pool = ConnectionPool.from_url(
            url,
            retry=Retry(NoBackoff(), 0),  # reconnecting is ours to do (and to clear after)
            socket_timeout=COMMAND_TIMEOUT,
            socket_connect_timeout=CONNECT_TIMEOUT,
            socket_keepalive=True,
            decode_responses=False,
            protocol=2,
        )
        self._client = Redis(connection_pool=self._pool)
        self._listener: asyncio.Task[None] | None = None
        self._tried = asyncio.Event()
        self._ever_connected = False

    def __repr__(self) -> str:
        return f"RedisBus({redact(self.url)!r}, channel={self.channel!r})"

    def attach(self, cache: Cache[Any]) -> None:
        self._caches.setdefault(cache.name, []).append(cache)

    async def start(self) -> None:
        """Start the subscriber; wait for its first attempt to subscribe, never for success."""
        if self._listener is not None:
            return
        self._tried = asyncio.Event()
        self._ever_connected = False  # a start after a close is no "reconnect"
        self._listener = asyncio.create_task(self._listen(), name=f"cache-bus:{self.channel}")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CONNECT_TIMEOUT + COMMAND_TIMEOUT):
                await self._tried.wait()

    async def close(self) -> None:
        """Stop the subscriber and close the connections. Safe twice."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
        self.connected = False
        with contextlib.suppress(*_Transport):
            await self._client.aclose(close_connection_pool=True)

    async def broadcast(self, cache: str, keys: list[str]) -> None:
        """Tell the other instances to drop ``keys`` from ``cache``; never raises for Redis.

        The sender has already dropped the keys locally. If the subscriber is
        disconnected, or Redis does not take the message within
        ``BROADCAST_TIMEOUT`` seconds, this logs, keeps the keys and
        publishes them once the bus is connected again: until then other
        instances may serve the old values, for at most their ``ttl``. A
        request never waits on a Redis that is known to be down.
        """
        if not keys:
            return
        if self._listener is not None and not self.connected:
            self._keep_unsent(cache, keys, "the bus is disconnected")
            return
        try:
            await self._publish(cache, keys)
        except _Transport as exc:
            self._keep_unsent(cache, keys, text_of(exc))

    # -- inside ----------------------------------------------------------------

    async def _publish(self, cache: str, keys: list[str] | None) -> None:
        payload = orjson.dumps({"origin": self.origin, "cache": cache, "keys": keys})
        publish = cast(Callable[..., Awaitable[int]], self._client.publish)
        async with asyncio.timeout(BROADCAST_TIMEOUT):
            await publish(self.channel, payload)

    def _keep_unsent(self, cache: str, keys: list[str], reason: str) -> None:
        # One warning per outage: the first invalidation that could not go out.
        level = logging.DEBUG if self._unsent else logging.WARNING
        log.log(
            level,
            "cache %r: could not send the invalidation of %d key(s) through %s (%s); "
            "other instances may serve them until their ttl ends; sending again when connected",
            cache, len(keys), redact(self.url), reason,
        )  # fmt: skip
        if cache in self._unsent and self._unsent[cache] is None:
            return
        pending = self._unsent.setdefault(cache, set())
        assert pending is not None
        pending.update(keys)
        if len(pending) > MAX_UNSENT:
            self._unsent[cache] = None

    async def _send_unsent(self) -> None:
        """Publish what failed to go out earlier; what fails again stays for next time."""
        for cache, keys in list(self._unsent.items()):
            await self._publish(cache, None if keys is None else sorted(keys))
            del self._unsent[cache]

    async def _listen(self) -> None:
        """Subscribe, apply, and on any failure back off and subscribe again, forever."""
        delay = RETRY_MIN
        while True:
            try:
                await self._session()
            except _Transport as exc:
                delay = self._lost(exc, delay)
            except Exception:  # a bug must not end invalidation for the life of the process
                log.exception("cache bus %s failed; subscribing again", redact(self.url))
                delay = RETRY_MAX
            finally:
                self.connected = False
                self._tried.set()
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)

    def _lost(self, exc: BaseException, delay: float) -> float:
        """Log a failed or lost subscription once per outage; returns the next delay."""
        text = text_of(exc)
        if self.connected:
            log.warning(
                "cache bus %s lost its connection (%s): invalidations from other instances "
                "are missed until it reconnects, then every cache is cleared",
                redact(self.url), text,
            )  # fmt: skip
            return RETRY_MIN
        if isinstance(exc, redis_errors.AuthenticationError) or text.startswith(_REFUSED):
            log.error(
                "setting cache_url=%r: Redis refused the credentials or a command (%s); put the "
                "right user and password in the URL, and let its ACL run +subscribe +publish "
                "+ping on channel &%s",
                redact(self.url), text, self.channel,
            )  # fmt: skip
            return RETRY_MAX
        if delay == RETRY_MIN:
            log.warning(
                "cache bus cannot reach %s (%s); retrying in the background, caches serve "
                "local data meanwhile (stale for at most their ttl)",
                redact(self.url), text,
            )  # fmt: skip
        return delay

    async def _session(self) -> None:
        """One subscription, from connect to the error that ends it."""
        pubsub = self._client.pubsub()
        try:
            await self._subscribe(pubsub)
            loop = asyncio.get_running_loop()
            heard = pinged = loop.time()
            while True:
                message = await pubsub.get_message(timeout=self.heartbeat)
                now = loop.time()
                if message is not None:
                    heard = now
                    if message["type"] == "message":
                        self._apply(message["data"])
                if now - heard > 3 * self.heartbeat:
                    raise _Silent(f"no reply to pings for {now - heard:.1f}s")
                if now - pinged >= self.heartbeat:
                    await pubsub.ping()
                    pinged = now
                    if self._unsent:  # a broadcast failed while the subscription held
                        await self._send_unsent()
        finally:
            with contextlib.suppress(*_Transport):
                await cast(Callable[[], Awaitable[None]], pubsub.aclose)()

    async def _subscribe(self, pubsub: PubSub) -> None:
        """Subscribe and wait for the server's confirmation; then clear what may be stale."""
        await pubsub.subscribe(self.channel)
        confirmation = await pubsub.get_message(timeout=COMMAND_TIMEOUT)
        if confirmation is None or confirmation["type"] != "subscribe":
            raise redis_errors.ConnectionError(f"no confirmation of SUBSCRIBE {self.channel}")
        # From here on every invalidation reaches us; anything before may not have.
        self.connected = True
        if self._ever_connected:
            self.reconnects += 1
            log.info("cache bus %s reconnected; caches cleared", redact(self.url))
        self._ever_connected = True
        for caches in self._caches.values():
            for cache in caches:
                cache.clear()
        self._tried.set()
        await self._send_unsent()

    def _apply(self, data: bytes) -> None:
        try:
            body = orjson.loads(data)
            origin, name, keys = body["origin"], body["cache"], body["keys"]
            if not isinstance(name, str) or not (keys is None or isinstance(keys, list)):
                raise TypeError("cache must be a string and keys a list or null")
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            log.warning("cache bus: ignored a malformed invalidation %r (%s)", data[:200], exc)
            return
        if origin == self.origin:
            return
        key_list = None if keys is None else [str(key) for key in keys]
        for cache in self._caches.get(name, ()):
            if key_list is None:
                cache.clear()
            else:
                cache.invalidate_local(key_list)
