"""A loopback TCP proxy that tests put between a client and a broker to break the network.

``TcpProxy(host, port)`` listens on a free 127.0.0.1 port and forwards every
connection to the target. ``cut()`` kills the live connections (what a
network failure or a broker restart looks like to the client), ``pause()``
turns new connections away until ``resume()``, ``blackhole()`` drops every
byte both ways without closing anything (a silent partition: no reset, no
FIN, new connections hang) until ``heal()``, and ``accepted`` counts the
connections let through, which is how a test sees a reconnect storm.

It runs its own event loop on a daemon thread, so the synchronous hooks of a
conformance factory and ``async`` tests drive it the same way, and a test
loop that is busy (or blocked in a cut) never stalls the traffic::

    with TcpProxy("127.0.0.1", 6379) as proxy:
        broker = connect(f"redis://127.0.0.1:{proxy.port}")
        ...
        proxy.cut()
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, TypeVar

__all__ = ["TcpProxy"]

T = TypeVar("T")

_CHUNK = 256 * 1024


class TcpProxy:
    """Forwards 127.0.0.1:``port`` to ``target_host``:``target_port`` until closed."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.accepted = 0
        """Connections forwarded to the target so far."""
        self.refused = 0
        """Connections turned away while paused (or because the target refused them)."""
        self._paused = False
        self._blackholed = False
        self._links: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    def start(self) -> TcpProxy:
        """Bind a free port and start forwarding; returns the proxy."""
        if self._server is None:
            self._thread.start()
            self._server = self._call(asyncio.start_server(self._accept, "127.0.0.1", 0))
            self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def live(self) -> int:
        """Client connections open right now."""
        return len(self._links) // 2

    def cut(self) -> int:
        """Kill every live connection at once, both ways; returns how many clients lost one."""
        return self._call(self._cut())

    def pause(self) -> None:
        """Turn new connections away (accept and close) until :meth:`resume`."""
        self._paused = True

    def resume(self) -> None:
        """Let new connections through again."""
        self._paused = False

    def blackhole(self) -> None:
        """Drop everything both ways, silently: live connections stay open but carry
        nothing, new ones are accepted and then hear nothing, until :meth:`heal`."""
        self._blackholed = True

    def heal(self) -> None:
        """End a :meth:`blackhole`: traffic flows again; what was dropped stays lost,
        and the connections that lived through it are cut (their streams have holes)."""
        self._blackholed = False
        self.cut()

    def close(self) -> None:
        """Stop listening, kill live connections and stop the thread. Safe twice."""
        if not self._loop.is_closed():
            if self._thread.is_alive():
                self._call(self._shutdown())
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join(timeout=5)
            self._loop.close()

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    async def _accept(
        self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter
    ) -> None:
        if self._blackholed:
            # A silent partition: the connect seems to work, then nothing comes back.
            self._links.add(client_out)
            with contextlib.suppress(Exception):
                while await client_in.read(_CHUNK):
                    pass
            self._links.discard(client_out)
            client_out.transport.abort()
            return
        if self._paused:
            self.refused += 1
            client_out.transport.abort()
            return
        try:
            target_in, target_out = await asyncio.open_connection(*self.target)
        except OSError:
            self.refused += 1
            client_out.transport.abort()
            return
        self.accepted += 1
        self._links.update((client_out, target_out))
        try:
            await asyncio.gather(
                _pump(client_in, target_out, self),
                _pump(target_in, client_out, self),
                return_exceptions=True,
            )
        finally:
            for writer in (client_out, target_out):
                self._links.discard(writer)
                writer.transport.abort()

    async def _cut(self) -> int:
        links = list(self._links)
        for writer in links:
            writer.transport.abort()
        return len(links) // 2

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._cut()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()


async def _pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter, proxy: TcpProxy) -> None:
    """Copy one direction until it ends; then end the other side's writing too.

    While the proxy is blackholed, what arrives is read and dropped.
    """
    try:
        while data := await source.read(_CHUNK):
            if proxy._blackholed:
                continue
            sink.write(data)
            await sink.drain()
    finally:
        sink.transport.abort()
