"""Run the real daemon in-process on an ephemeral port and talk to it as a client would.

    async with serve(tmp_path, CONFIG) as d:
        ws = await d.ws()
        await ws.send({"type": "submit", "id": 1, "endpoint": "echo", "data": 5})
        done = await ws.terminal(1)

`serve` writes the YAML next to the tests' working directory, loads it exactly as `servd run`
does (`load_checked`, then `servd.service.build` and `start` on a socket bound to 127.0.0.1:0).
On exit it shuts the daemon down and fails the test if the daemon logged an unexpected error.
"""

from __future__ import annotations

import asyncio
import inspect
import io
import json
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.netutil import bind_sockets
from tornado.websocket import WebSocketClientConnection, websocket_connect

from servd import service
from servd.daemon.daemon import Daemon
from servd.daemon.loading import load_checked
from servd.service import Service

TERMINAL = ("completed", "error")
WAIT_S = 20.0  # generous: tests must not depend on timing
PROCESS_WAIT_S = 60.0  # for a real `servd run`, which starts a Python and imports torch first
POLL_S = 0.02

T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T]] | Callable[[], T],
    what: str,
    *,
    until: Callable[[T], object] = bool,
    timeout: float = WAIT_S,
    interval: float = POLL_S,
) -> T:
    """The first value of `probe()` (a function or a coroutine function) that satisfies `until`
    (truthy, unless told), polled every `interval`. After `timeout` the test fails, naming `what`
    it waited for and the last value it saw."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = probe()
        if inspect.isawaitable(value):
            value = await value
        if until(value):
            return value
        if loop.time() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}; last value: {_shown(value)}")
        await asyncio.sleep(interval)


def eventually_sync(
    probe: Callable[[], T],
    what: str,
    *,
    until: Callable[[T], object] = bool,
    timeout: float = PROCESS_WAIT_S,
    interval: float = POLL_S,
) -> T:
    """`eventually` for tests without an event loop (those that drive a `servd run` process)."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if until(value):
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}; last value: {_shown(value)}")
        time.sleep(interval)


def _shown(value: object, limit: int = 2000) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


@dataclass
class Reply:
    status: int
    headers: Any
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class WsClient:
    """A websocket client that keeps every message it receives, grouped by request id."""

    def __init__(self, conn: WebSocketClientConnection) -> None:
        self.conn = conn
        self.messages: list[dict[str, Any]] = []
        self._arrived = asyncio.Event()
        self.closed = False
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        while True:
            text = await self.conn.read_message()
            if text is None:
                self.closed = True
                self._arrived.set()
                return
            self.messages.append(self._parse(text))
            self._arrived.set()

    def _parse(self, text: str) -> dict[str, Any]:
        """One server message as the tests see it (subclasses may note more)."""
        return json.loads(text)  # type: ignore[no-any-return]

    async def send(self, message: dict[str, Any] | str | bytes) -> None:
        payload = message if isinstance(message, (str, bytes)) else json.dumps(message)
        await self.conn.write_message(payload, binary=isinstance(payload, bytes))

    async def submit(self, id: Any, endpoint: str | None, data: Any, **extra: Any) -> None:
        message = {"type": "submit", "id": id, "data": data, **extra}
        if endpoint is not None:
            message["endpoint"] = endpoint
        await self.send(message)

    def of(self, id: Any) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("id") == id]

    def terminals(self) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["type"] in TERMINAL]

    async def wait_for(self, predicate: Any, timeout: float = WAIT_S) -> dict[str, Any]:
        """The first message (already received or future) that satisfies `predicate`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        seen = 0
        while True:
            for message in self.messages[seen:]:
                if predicate(message):
                    return message
            seen = len(self.messages)
            if self.closed:
                raise AssertionError(f"socket closed while waiting; got {self.messages[-5:]}")
            self._arrived.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"timed out waiting; last messages: {self.messages[-5:]}")
            with suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)

    async def terminal(self, id: Any, timeout: float = WAIT_S) -> dict[str, Any]:
        return await self.wait_for(lambda m: m.get("id") == id and m["type"] in TERMINAL, timeout)

    async def wait_closed(self, timeout: float = WAIT_S) -> None:
        await asyncio.wait_for(asyncio.shield(self._reader), timeout)

    def close(self) -> None:
        self.conn.close()


@dataclass
class Running:
    service: Service
    config_path: Path
    logs: io.StringIO
    clients: list[WsClient] = field(default_factory=list)

    @property
    def daemon(self) -> Daemon:
        return self.service.daemon

    @property
    def port(self) -> int:
        return self.service.port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def ws(self, path: str = "/v1/ws", headers: dict[str, str] | None = None) -> WsClient:
        request = HTTPRequest(self.ws_url + path, headers=headers or {})
        client = WsClient(await websocket_connect(request))
        self.clients.append(client)
        return client

    async def http(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
        timeout: float = WAIT_S,
    ) -> Reply:
        if raw is None and body is not None:
            raw = json.dumps(body).encode()
        if raw is None and method == "POST":
            raw = b""
        request = HTTPRequest(
            self.url + path,
            method=method,
            body=raw,
            headers=headers or {},
            request_timeout=timeout,
            allow_nonstandard_methods=True,
        )
        try:
            response = await AsyncHTTPClient().fetch(request)
        except HTTPClientError as exc:
            if exc.response is None:
                raise
            response = exc.response
        return Reply(response.code, response.headers, response.body or b"")

    async def post(self, endpoint: str, data: Any, **kwargs: Any) -> Reply:
        return await self.http("POST", f"/v1/endpoints/{endpoint}", {"data": data}, **kwargs)

    def log_events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.logs.getvalue().splitlines() if line.startswith("{")]

    def errors_logged(self) -> list[dict[str, Any]]:
        return [e for e in self.log_events() if e.get("level") in ("error", "critical")]


def write_config(directory: Path, text: str, name: str = "servd.yaml") -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


@asynccontextmanager
async def serve(
    directory: Path, config: str, *, expect_errors: bool = False, start: bool = True
) -> AsyncIterator[Running]:
    """Start the daemon on the config text; shut it down (draining) afterwards."""
    path = write_config(directory, config)
    logs = io.StringIO()
    running = Running(service.build(load_checked(path), log_stream=logs), path, logs)
    sockets = bind_sockets(0, "127.0.0.1")
    try:
        if start:
            await service.start(running.service, sockets)
        yield running
    finally:
        for client in running.clients:
            client.close()
        await running.service.stop()
        for client in running.clients:  # closed while this loop still runs: else each socket is
            with suppress(Exception):  # garbage-collected later, and its ResourceWarning fails
                await client.wait_closed(timeout=5)  # whichever test is running then
        if not running.service.front.sockets:  # never started: the front didn't take the sockets
            for sock in sockets:
                sock.close()
    if not expect_errors:
        assert running.errors_logged() == [], f"unexpected error logs: {running.errors_logged()}"
