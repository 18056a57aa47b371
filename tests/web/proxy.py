"""A loopback TCP proxy that drops one connection part-way, as a flaky network would."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field


@dataclass
class CuttingProxy:
    """Forwards to ``target``; the first response carrying ``cut_after`` is forwarded
    up to and including that chunk, then its connection is closed."""

    target_port: int
    cut_after: bytes
    port: int = 0
    cut: bool = False
    requests: list[bytes] = field(default_factory=list)  # what clients sent
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)
    _handlers: set[asyncio.Task[None]] = field(default_factory=set)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: bool
    ) -> None:
        try:
            while chunk := await reader.read(65536):
                if upstream:
                    self.requests.append(chunk)
                writer.write(chunk)
                await writer.drain()
                if not upstream and not self.cut and self.cut_after in chunk:
                    self.cut = True
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._writers.add(client_w)
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target_port)
            self._writers.add(server_w)
            await asyncio.gather(
                self._pump(client_r, server_w, upstream=True),
                self._pump(server_r, client_w, upstream=False),
            )
        finally:
            self._handlers.discard(task)

    async def serve(self, ready: threading.Event, stop: asyncio.Event) -> None:
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        ready.set()
        async with server:
            await stop.wait()
            for writer in self._writers:
                writer.close()
            for handler in list(self._handlers):
                handler.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)
            for writer in self._writers:
                with suppress(Exception):
                    await writer.wait_closed()


@contextmanager
def cutting_proxy(target_port: int, cut_after: bytes) -> Iterator[CuttingProxy]:
    proxy = CuttingProxy(target_port, cut_after)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    stop = asyncio.Event()
    thread = threading.Thread(
        target=lambda: loop.run_until_complete(proxy.serve(ready, stop)), daemon=True
    )
    thread.start()
    ready.wait(10)
    try:
        yield proxy
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        with suppress(Exception):
            loop.close()
