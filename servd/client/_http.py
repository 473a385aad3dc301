"""A small HTTP/1.1 client on asyncio streams: POST with a JSON body, JSON or SSE answers, keep-alive.

Why not tornado's AsyncHTTPClient: it can't abort a request in flight, and servd cancels an HTTP
request exactly when its client hangs up, so `cancel()` and client-side timeouts need to close
the connection. Why not urllib: it blocks. This speaks only what servd answers: Content-Length
or chunked bodies, no redirects, no proxies, no compression.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

MAX_IDLE = 64  # idle keep-alive connections kept per client
LINE_LIMIT = 1 << 16  # longest status or header line accepted


@dataclass(frozen=True)
class Target:
    """Where a server is, parsed once from the URL the user gave (ws://, wss://, http://, https://)."""

    secure: bool
    host: str
    port: int
    prefix: str  # path prefix when servd sits behind a proxy under a sub-path

    @classmethod
    def parse(cls, url: str) -> Target:
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss", "http", "https") or not parts.hostname:
            raise ValueError(f"servd URL must look like ws://host:port or http://host:port, got {url!r}")
        secure = parts.scheme in ("wss", "https")
        prefix = parts.path.rstrip("/")
        if prefix.endswith("/v1/ws"):
            prefix = prefix[: -len("/v1/ws")]
        return cls(secure, parts.hostname, parts.port or (443 if secure else 80), prefix)

    @property
    def netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def ws_url(self, path: str = "/v1/ws") -> str:
        return f"{'wss' if self.secure else 'ws'}://{self.netloc}{self.prefix}{path}"

    def http_url(self, path: str) -> str:
        return f"{'https' if self.secure else 'http'}://{self.netloc}{self.prefix}{path}"

    def endpoint_path(self, endpoint: str) -> str:
        return f"{self.prefix}/v1/endpoints/{quote(endpoint, safe='')}"


class Response:
    """Status and headers of one answer; its body is read once, with `read()` or `events()`."""

    def __init__(self, connection: Connection, status: int, headers: dict[str, str]) -> None:
        self.connection = connection
        self.status = status
        self.headers = headers

    async def read(self) -> bytes:
        body = bytearray()
        async for chunk in self.connection.body(self.headers):
            body += chunk
        return bytes(body)

    async def json(self) -> Any:
        return json.loads(await self.read())

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Server-sent events' `data:` payloads, decoded as JSON (servd sends one JSON line each)."""
        pending = b""
        async for chunk in self.connection.body(self.headers):
            pending += chunk.replace(b"\r\n", b"\n")
            while b"\n\n" in pending:
                event, pending = pending.split(b"\n\n", 1)
                data = b"\n".join(line[5:].lstrip() for line in event.split(b"\n") if line.startswith(b"data:"))
                if data:
                    yield json.loads(data)


class Connection:
    """One TCP (or TLS) connection; closes itself on any error so it is never reused half-read."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.reusable = False
        self.closed = False

    @classmethod
    async def open(cls, target: Target, timeout: float) -> Connection:
        context = ssl.create_default_context() if target.secure else None
        opening = asyncio.open_connection(target.host, target.port, ssl=context, limit=LINE_LIMIT)
        reader, writer = await asyncio.wait_for(opening, timeout)
        return cls(reader, writer)

    async def request(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Response:
        head = [f"{method} {path} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items())]
        head.append(f"Content-Length: {len(body)}")
        self.writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
        await self.writer.drain()
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionResetError("the server closed the connection without answering")
        try:
            status = int(status_line.split()[1])
        except (IndexError, ValueError):
            raise ConnectionResetError(f"not an HTTP answer: {status_line[:80]!r}") from None
        answer = await self._headers()
        self.reusable = answer.get("connection", "").lower() != "close"
        return Response(self, status, answer)

    async def _headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        while True:
            line = (await self.reader.readline()).decode("latin-1").rstrip("\r\n")
            if not line:
                return headers
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()

    async def body(self, headers: dict[str, str]) -> AsyncIterator[bytes]:
        """The body's bytes as they arrive (Content-Length, chunked, or until the server closes)."""
        if "chunked" in headers.get("transfer-encoding", "").lower():
            while size := int((await self.reader.readline()).split(b";")[0].strip() or b"0", 16):
                yield await self.reader.readexactly(size)
                await self.reader.readexactly(2)
            await self._headers()  # trailers, if any, end with a blank line
        elif "content-length" in headers:
            remaining = int(headers["content-length"])
            while remaining > 0:
                chunk = await self.reader.read(min(remaining, 1 << 16))
                if not chunk:
                    raise asyncio.IncompleteReadError(b"", remaining)
                remaining -= len(chunk)
                yield chunk
        else:
            self.reusable = False
            while chunk := await self.reader.read(1 << 16):
                yield chunk

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.writer.close()


class Pool:
    """Keep-alive connections to one server, reused for plain JSON answers (SSE ones are closed).

    A request on a reused connection that the server closed while idle is retried once on a
    fresh connection, as browsers do: the server hadn't started answering, so it never saw it.
    """

    def __init__(self, target: Target, connect_timeout: float) -> None:
        self.target = target
        self.connect_timeout = connect_timeout
        self.idle: list[Connection] = []

    async def request(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Response:
        while self.idle:
            connection = self.idle.pop()
            try:
                return await connection.request(method, path, headers, body)
            except (ConnectionError, asyncio.IncompleteReadError):
                connection.close()
        connection = await Connection.open(self.target, self.connect_timeout)
        try:
            return await connection.request(method, path, headers, body)
        except BaseException:
            connection.close()
            raise

    def release(self, connection: Connection) -> None:
        """Back to the pool once its answer was read in full, else closed."""
        if connection.reusable and not connection.closed and len(self.idle) < MAX_IDLE:
            connection.reusable = False
            self.idle.append(connection)
        else:
            connection.close()

    async def close(self) -> None:
        idle, self.idle = self.idle, []
        for connection in idle:
            connection.close()
        for connection in idle:
            with contextlib.suppress(OSError, asyncio.TimeoutError):
                await asyncio.wait_for(connection.writer.wait_closed(), 1.0)
