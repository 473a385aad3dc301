"""Headless Chromium driven over the Chrome DevTools Protocol with tornado's websocket client.

No browser-automation library: the distribution's Chromium (.ci/run installs it where missing)
is started once per test module with a DevTools port, and each test opens its own page in a
fresh browser context (its own sessionStorage and cache), runs JavaScript in it, sends real key
presses, takes screenshots, and keeps what the page logged and every request it made, so a test
can assert "no console errors, no request to another origin".

    browser = Chromium.launch(tmp_path)              # a module-scoped fixture does this
    async with open_page(browser, d.url) as page:
        await page.wait("document.querySelector('h1')", "a heading")
        page.assert_clean(d.url)
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tornado.websocket import WebSocketClientConnection, websocket_connect

from tests.harness import eventually

CHROMIUM = os.environ.get("SERVD_CHROMIUM") or next(
    (path for name in ("chromium", "chromium-browser", "google-chrome") if (path := shutil.which(name))), None
)
START_TIMEOUT_S = 60.0  # Chromium's first start on a small CI machine is slow
COMMAND_TIMEOUT_S = 30.0
VIEWPORT = (1280, 860)
KEYS = {"Tab": 9, "Enter": 13, "Escape": 27, " ": 32}


@dataclass
class Chromium:
    """A headless Chromium process listening for DevTools on a port it chose."""

    process: subprocess.Popen[bytes]
    ws_url: str

    @classmethod
    def launch(cls, directory: Path) -> Chromium:
        assert CHROMIUM is not None
        profile = directory / "chromium-profile"
        (profile / "DevToolsActivePort").unlink(missing_ok=True)  # a previous run's port
        log = (directory / "chromium.log").open("wb")
        process = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-default-apps", "--no-default-browser-check", "--hide-scrollbars", "--mute-audio",
             "--disable-features=Translate,MediaRouter,OptimizationHints", "--remote-debugging-port=0",
             f"--user-data-dir={profile}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True,
        )  # fmt: skip
        log.close()
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + START_TIMEOUT_S
        while not (port_file.exists() and len(port_file.read_text().split()) >= 2):
            if process.poll() is not None or time.monotonic() > deadline:
                os.killpg(process.pid, signal.SIGKILL)
                tail = (directory / "chromium.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"Chromium did not open its DevTools port: {tail}")
            time.sleep(0.05)
        port, path = port_file.read_text().split()[:2]
        return cls(process, f"ws://127.0.0.1:{port}{path}")

    def stop(self) -> None:
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)


class DevTools:
    """One DevTools connection: commands with their answers, and events by session."""

    def __init__(self, conn: WebSocketClientConnection) -> None:
        self.conn = conn
        self.ids = itertools.count(1)
        self.waiting: dict[int, asyncio.Future[Any]] = {}
        self.listeners: dict[str, list[Any]] = {}
        self.reader = asyncio.ensure_future(self._read())

    @classmethod
    async def connect(cls, ws_url: str) -> DevTools:
        return cls(await websocket_connect(ws_url, max_message_size=256 * 1024 * 1024))

    async def _read(self) -> None:
        while (text := await self.conn.read_message()) is not None:
            message = json.loads(text)
            if "id" in message:
                future = self.waiting.pop(message["id"], None)
                if future is not None and not future.done():
                    if "error" in message:
                        future.set_exception(RuntimeError(f"DevTools: {message['error']}"))
                    else:
                        future.set_result(message.get("result", {}))
            else:
                for listener in self.listeners.get(message.get("sessionId", ""), []):
                    listener(message["method"], message.get("params", {}))
        for future in self.waiting.values():
            if not future.done():
                future.set_exception(ConnectionError("the DevTools connection closed"))

    async def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> Any:
        number = next(self.ids)
        message: dict[str, Any] = {"id": number, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        future = self.waiting[number] = asyncio.get_running_loop().create_future()
        await self.conn.write_message(json.dumps(message))
        return await asyncio.wait_for(future, COMMAND_TIMEOUT_S)

    async def close(self) -> None:
        """Close the connection and wait for its closing handshake, so its socket is closed too
        (cancelling the reader alone left the socket open for the garbage collector to find)."""
        self.conn.close()
        with suppress(Exception):
            await asyncio.wait_for(asyncio.shield(self.reader), 5)
        self.reader.cancel()
        stream = getattr(self.conn, "stream", None)
        if stream is not None:
            stream.close()


@dataclass
class Page:
    """One tab in its own browser context; what it logged (`errors`) and requested (`requests`)."""

    devtools: DevTools
    session: str
    target: str
    context: str
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def on_event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert", "warning"):
            self.errors.append(f"console.{params['type']}: " + " ".join(_shown(a) for a in params["args"]))
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            self.errors.append(f"exception: {details.get('exception', {}).get('description') or details['text']}")
        elif method == "Log.entryAdded" and params["entry"]["level"] in ("error", "warning"):
            entry = params["entry"]
            self.errors.append(f"log ({entry['source']}): {entry['text']} {entry.get('url', '')}".strip())
        elif method == "Network.requestWillBeSent":
            self.requests.append(params["request"]["url"])
        elif method == "Network.webSocketCreated":
            self.requests.append(params["url"])

    async def send(self, method: str, params: dict[str, Any] | None = None) -> Any:
        return await self.devtools.send(method, params, self.session)

    async def goto(self, url: str) -> None:
        await self.send("Page.navigate", {"url": url})

    async def eval(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (awaited if it is a promise)."""
        reply = await self.send(
            "Runtime.evaluate", {"expression": expression, "awaitPromise": True, "returnByValue": True}
        )
        if "exceptionDetails" in reply:
            raise AssertionError(f"{expression!r} threw: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    async def wait(self, expression: str, what: str, timeout: float = 20.0) -> Any:
        """The first truthy value of `expression`, polled; fails naming `what` after `timeout`."""

        async def probe() -> Any:
            return await self.eval(expression)

        return await eventually(probe, what, timeout=timeout, interval=0.05)

    async def text(self, selector: str) -> str | None:
        return await self.eval(f"document.querySelector({json.dumps(selector)})?.textContent ?? null")  # type: ignore[no-any-return]

    async def click(self, selector: str) -> None:
        found = await self.eval(f"(e => e ? (e.click(), true) : false)(document.querySelector({json.dumps(selector)}))")
        assert found, f"nothing to click at {selector}"

    async def fill(self, selector: str, value: str) -> None:
        """Set a field's value as typing would, firing input and change."""
        script = f"""(e => {{ if (!e) return false; e.focus(); e.value = {json.dumps(value)};
            for (const kind of ["input", "change"]) e.dispatchEvent(new Event(kind, {{bubbles: true}}));
            return true; }})(document.querySelector({json.dumps(selector)}))"""
        assert await self.eval(script), f"no field at {selector}"

    async def press(self, key: str, *, shift: bool = False) -> None:
        """A real key press (Tab moves focus, Enter submits, Space toggles): keyboard use, not script."""
        code = KEYS[key]
        base = {
            "key": key,
            "code": "Space" if key == " " else key,
            "windowsVirtualKeyCode": code,
            "modifiers": 8 * shift,
        }
        down = {**base, "type": "keyDown"}
        if key in ("Enter", " "):
            down = {**down, "type": "keyDown", "text": "\r" if key == "Enter" else " "}
        await self.send("Input.dispatchKeyEvent", down)
        await self.send("Input.dispatchKeyEvent", {**base, "type": "keyUp"})

    async def type_text(self, text: str) -> None:
        await self.send("Input.insertText", {"text": text})

    async def viewport(self, width: int, height: int, mobile: bool = False) -> None:
        await self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile},
        )

    async def screenshot(self, path: Path, down_to: str | None = None) -> None:
        """A PNG of the viewport; with `down_to` (a selector), cut just below that element."""
        params: dict[str, Any] = {"format": "png", "captureBeyondViewport": False}
        if down_to is not None:
            bottom = await self.eval(f"document.querySelector({json.dumps(down_to)}).getBoundingClientRect().bottom")
            width = await self.eval("document.documentElement.clientWidth")
            params["clip"] = {"x": 0, "y": 0, "width": width, "height": min(VIEWPORT[1], bottom + 24), "scale": 1}
        reply = await self.send("Page.captureScreenshot", params)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(reply["data"]))

    def other_origins(self, origin: str) -> list[str]:
        """Requests to anything but `origin` (http and ws alike) and inline data: URLs."""
        own = urlsplit(origin).netloc
        return [url for url in self.requests if not url.startswith("data:") and urlsplit(url).netloc != own]

    def assert_clean(self, origin: str, allowed_errors: tuple[str, ...] = ()) -> None:
        """No console errors or warnings (but those naming one of `allowed_errors`), no request elsewhere."""
        errors = [e for e in self.errors if not any(allowed in e for allowed in allowed_errors)]
        assert errors == [], f"the page logged: {errors}"
        assert self.other_origins(origin) == [], f"requests to other origins: {self.other_origins(origin)}"
        assert self.requests, "the page made no request at all"


def _shown(argument: dict[str, Any]) -> str:
    return str(argument.get("value", argument.get("description", argument.get("type"))))


@asynccontextmanager
async def open_page(browser: Chromium, url: str, viewport: tuple[int, int] = VIEWPORT) -> AsyncIterator[Page]:
    """A new tab at `url` in a fresh browser context, watched from before its first request."""
    devtools = await DevTools.connect(browser.ws_url)
    context = (await devtools.send("Target.createBrowserContext", {"disposeOnDetach": True}))["browserContextId"]
    target = (await devtools.send("Target.createTarget", {"url": "about:blank", "browserContextId": context}))[
        "targetId"
    ]
    session = (await devtools.send("Target.attachToTarget", {"targetId": target, "flatten": True}))["sessionId"]
    page = Page(devtools, session, target, context)
    devtools.listeners[session] = [page.on_event]
    try:
        for domain in ("Runtime", "Log", "Network", "Page"):
            await page.send(f"{domain}.enable")
        await page.viewport(*viewport)
        await page.goto(url)
        yield page
    finally:
        with suppress(Exception):
            await devtools.send("Target.closeTarget", {"targetId": target})
        with suppress(Exception):
            await devtools.send("Target.disposeBrowserContext", {"browserContextId": context})
        await devtools.close()
