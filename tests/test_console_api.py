"""The web console's server side (issue 15): its pages and their headers, the push channel
GET /v1/events, the OpenAPI document, and token handling for browsers.

What a browser does with them is tests/test_console_browser.py's; here an HTTP client checks
what servd answers.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from openapi_spec_validator import validate as validate_openapi
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

from servd.errors import ErrorCode
from servd.protocols import openapi
from servd.web.handlers import events
from servd.web.handlers.console import CSP, assets
from servd.web.live import LiveFeed
from tests.harness import Running, WsClient, eventually, serve
from tests.test_reload_live import save_atomic, wait_generation

CONFIG = """
version: 1
server:
  {server}
endpoints:
  echo:
    entrypoint: examples.echo:echo
  typed:
    entrypoint: examples.echo:echo
    queue: {{max_size: 10, max_per_client: 2}}
    input_schema:
      type: object
      required: [n]
      properties:
        n: {{type: integer, minimum: 1, maximum: 5}}
        tree: {{$ref: "#/$defs/tree"}}
      $defs:
        tree: {{type: array, items: {{type: number}}}}
  closed:
    entrypoint: examples.echo:echo
    api_open: false
"""
PLAIN = CONFIG.format(server="max_connections: 100")
TOKENS = CONFIG.format(server="tokens_file: tokens.txt")
TOKEN = "s3cret/with+odd=chars"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def subprotocol(token: str) -> str:
    return "servd.bearer." + base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")


class EventStream:
    """GET /v1/events read as it arrives: `events` holds (kind, body) in order."""

    def __init__(self, d: Running, headers: dict[str, str] | None = None) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.buffer = ""
        request = HTTPRequest(
            d.url + "/v1/events", headers=headers or {}, streaming_callback=self._chunk, request_timeout=60
        )
        self.done = asyncio.ensure_future(AsyncHTTPClient().fetch(request, raise_error=False))
        self.done.add_done_callback(lambda f: f.cancelled() or f.exception())  # the daemon's stop closes it

    def _chunk(self, chunk: bytes) -> None:
        self.buffer += chunk.decode()
        while "\n\n" in self.buffer:
            block, self.buffer = self.buffer.split("\n\n", 1)
            fields = dict(line.split(": ", 1) for line in block.splitlines())
            self.events.append((fields["event"], json.loads(fields["data"])))

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [body for k, body in self.events if k == kind]

    async def wait(self, kind: str, count: int = 1, what: str = "") -> list[dict[str, Any]]:
        return await eventually(lambda: len(self.of(kind)) >= count and self.of(kind), what or f"{count} {kind}")


# -- the pages --------------------------------------------------------------------------------------


FIRST_STATE = '<script type="application/json" id="first-state">'


async def test_the_console_is_served_at_the_root_with_a_strict_content_security_policy(tmp_path):
    """GET / is the console: scripts from this origin only (no inline script anywhere), no framing,
    no sniffing, nothing fetched from another origin; its files under /console/ carry the same headers."""
    async with serve(tmp_path, PLAIN) as d:
        page = await d.http("GET", "/")
        script = await d.http("GET", "/console/app.js")
    assert page.status == 200 and page.headers["Content-Type"].startswith("text/html")
    for reply in (page, script):
        assert reply.headers["Content-Security-Policy"] == CSP
        assert reply.headers["X-Content-Type-Options"] == "nosniff"
        assert reply.headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in CSP and "script-src 'self'" in CSP and "unsafe" not in CSP
    assert script.headers["Content-Type"].startswith("text/javascript")
    html = page.body.decode()
    scripts = re.findall(r"<script[^>]*>", html)
    assert all(re.search(r'\bsrc="/console/', tag) or tag == FIRST_STATE for tag in scripts), "no inline script"
    assert scripts.count(FIRST_STATE) == 1, "the first state is a data block: it runs nothing"
    assert not re.search(r"\son[a-z]+=", html), "no inline event handlers"
    every_file = "".join(a.body.decode() for a in assets().values())
    assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", every_file), "nothing fetched from elsewhere"


async def test_the_console_files_answer_with_an_etag_and_unknown_files_with_not_found(tmp_path):
    """A console file answers with an ETag and a revalidation gets 304 Not Modified; a file that isn't there is a
    404 not_found in servd's error shape."""
    async with serve(tmp_path, PLAIN) as d:
        first = await d.http("GET", "/console/console.css")
        again = await d.http("GET", "/console/console.css", headers={"If-None-Match": first.headers["Etag"]})
        missing = await d.http("GET", "/console/nothing.js")
    assert (first.status, again.status) == (200, 304)
    assert (missing.status, missing.json()["error"]["code"]) == (404, "not_found")


async def test_console_false_turns_the_pages_off_live_and_keeps_the_api_for_scripts(tmp_path):
    """server.console: false (a reload applies it): / and /console/* are not_found; /v1/events and
    /openapi.json stay, since scripts use them."""
    async with serve(tmp_path, PLAIN) as d:
        assert (await d.http("GET", "/")).status == 200
        save_atomic(d.config_path, CONFIG.format(server="console: false"))
        await wait_generation(d, 2)
        page, asset = await d.http("GET", "/"), await d.http("GET", "/console/app.js")
        document = await d.http("GET", "/openapi.json")
        assert (page.status, asset.status, document.status) == (404, 404, 200)
        assert "server.console: false" in page.json()["error"]["message"]
        stream = EventStream(d)
        await stream.wait("status")


async def test_the_page_is_told_whether_a_token_is_needed_and_needs_none_itself(tmp_path):
    """With tokens_file the page itself loads without a token (it shows nothing of the deployment)
    and says data-auth="token", so it asks for one before its first call."""
    (tmp_path / "tokens.txt").write_text(TOKEN + "\n")
    async with serve(tmp_path, TOKENS) as d:
        page = await d.http("GET", "/")
    assert page.status == 200 and 'data-auth="token"' in page.body.decode()
    assert "echo" not in page.body.decode()


# -- the push channel -------------------------------------------------------------------------------


async def test_the_event_stream_says_hello_then_a_status_about_once_a_second(tmp_path):
    """GET /v1/events: hello (history, reloads), then status events with the daemon's status, every
    endpoint as /v1/endpoints shows it and the newest throughput sample."""
    async with serve(tmp_path, PLAIN) as d:
        stream = EventStream(d)
        await stream.wait("status", 3, "three status events")
        started = time.monotonic()
        await stream.wait("status", 5, "two more")
        elapsed = time.monotonic() - started
        listed = (await d.http("GET", "/v1/endpoints")).json()["endpoints"]
    assert stream.events[0][0] == "hello" and set(stream.events[0][1]) == {"type", "interval_s", "history", "reloads"}
    status = stream.of("status")[-1]
    assert status["status"]["generation"] == 1 and status["status"]["consoles"] == 1
    assert "connections" in status["status"] and "uptime_s" in status["status"]
    assert [e["name"] for e in status["endpoints"]] == [e["name"] for e in listed] == ["echo", "typed", "closed"]
    assert set(status["endpoints"][0]) == set(listed[0])
    assert set(status["sample"]) == {"echo", "typed", "closed"}
    assert 1.0 <= elapsed <= 8.0, "about one a second (two intervals; generous upper bound for a loaded machine)"


async def test_throughput_and_p99_history_is_kept_and_sent_to_a_new_subscriber(tmp_path):
    """Completions are sampled every second whether a console listens or not: one opened later
    gets the recent history (t, rps, p99_s per endpoint) in its hello and charts at once."""
    async with serve(tmp_path, PLAIN) as d:
        for i in range(40):
            await d.post("echo", i)

        def has_points() -> bool:
            series = LiveFeed_of(d).series.get("echo")
            return series is not None and sum(series.rps) > 0

        await eventually(has_points, "a sampled second with completions")
        stream = EventStream(d)
        hello = (await stream.wait("hello"))[0]
    echo = hello["history"]["echo"]
    assert len(echo["t"]) == len(echo["rps"]) == len(echo["p99_s"]) >= 1
    done = [rps for rps in echo["rps"] if rps > 0]
    assert done and all(p is not None for p, rps in zip(echo["p99_s"], echo["rps"], strict=True) if rps > 0)
    assert sum(r * 1.0 for r in echo["rps"]) >= 10  # 40 requests over a few seconds


def LiveFeed_of(d: Running) -> LiveFeed:
    """The feed the app made for this daemon (the Events route holds it)."""
    for rule in d.service.front.app.wildcard_router.rules:
        if rule.target_kwargs and "feed" in rule.target_kwargs:
            return rule.target_kwargs["feed"]  # type: ignore[no-any-return]
    raise AssertionError("no /v1/events route")


async def test_a_reload_is_an_event_and_a_rejected_one_carries_its_file_line_col_problems(tmp_path):
    """Each reload is pushed at once as a reload event (with its changes), followed by a fresh
    status; an invalid file's event carries the problems as servd.yaml:line:col lines."""
    async with serve(tmp_path, PLAIN, expect_errors=True) as d:
        stream = EventStream(d)
        await stream.wait("status")
        save_atomic(d.config_path, PLAIN + "  words:\n    entrypoint: examples.stream:words\n")
        applied = (await stream.wait("reload"))[0]
        save_atomic(d.config_path, PLAIN + "  broken:\n    entrypoint: examples.echo:echo\n    concurrency: -1\n")
        rejected = (await stream.wait("reload", 2))[1]
        await eventually(lambda: any(s["status"]["generation"] == 2 for s in stream.of("status")), "status of gen 2")
    assert applied["result"] == "applied" and applied["changes"]["added"] == ["words"]
    after = next(s for s in stream.of("status") if s["status"]["generation"] == 2)
    assert "words" in [e["name"] for e in after["endpoints"]]
    assert rejected["result"] == "invalid"
    assert re.search(r"servd\.yaml:\d+:\d+: endpoints\.broken\.concurrency: ", rejected["error"]), rejected["error"]


async def test_the_event_stream_needs_a_token_and_ends_when_a_reload_revokes_it(tmp_path):
    """With tokens_file: 401 without a token; with one, the stream; a reload whose tokens file no
    longer holds it ends that stream (the console then asks again)."""
    tokens = tmp_path / "tokens.txt"
    tokens.write_text(TOKEN + "\n")
    async with serve(tmp_path, TOKENS) as d:
        refused = await d.http("GET", "/v1/events")
        assert (refused.status, refused.json()["error"]["code"]) == (401, "unauthorized")
        stream = EventStream(d, AUTH)
        await stream.wait("status")
        (tmp_path / "rotated.txt").write_text("another-token\n")
        save_atomic(d.config_path, TOKENS.replace("tokens.txt", "rotated.txt"))
        reply = await asyncio.wait_for(stream.done, 10)
    assert reply.code == 200, "the stream ended, cleanly"


async def test_a_token_removed_from_the_tokens_file_is_revoked_by_sighup_and_its_stream_ends(tmp_path):
    """Rotating a token in place (edit tokens.txt, then SIGHUP, the config unchanged) revokes the
    old one at once: its console stream ends and it is refused; the new one is let in."""
    tokens = tmp_path / "tokens.txt"
    tokens.write_text(TOKEN + "\n")
    async with serve(tmp_path, TOKENS) as d:
        stream = EventStream(d, AUTH)
        await stream.wait("status")
        tokens.write_text("rotated-token\n")
        d.daemon.request_reload()  # what SIGHUP calls
        reply = await asyncio.wait_for(stream.done, 10)
        old = await d.http("GET", "/v1/status", headers=AUTH)
        new = await d.http("GET", "/v1/status", headers={"Authorization": "Bearer rotated-token"})
    assert reply.code == 200 and (old.status, new.status) == (401, 200)


async def test_a_console_that_stops_reading_skips_snapshots_and_is_dropped_at_last(tmp_path, monkeypatch):
    """Each status replaces the last: while a stream's previous write hasn't left, new snapshots
    are skipped rather than buffered, and after MAX_SKIPPED in a row the stream is ended."""
    monkeypatch.setattr(events, "MAX_SKIPPED", 3)
    async with serve(tmp_path, PLAIN) as d:
        stream = EventStream(d)
        await stream.wait("status", 2)
        (handler,) = LiveFeed_of(d).subscribers
        assert isinstance(handler, events.Events)
        handler.writing = asyncio.get_running_loop().create_future()  # as if the socket stopped draining
        seen = len(stream.of("status"))
        reply = await asyncio.wait_for(stream.done, 10)
        assert reply.code == 200 and len(stream.of("status")) == seen, "nothing more was written"
        assert handler.skipped >= 3 and LiveFeed_of(d).subscribers == set()


# -- tokens for browsers --------------------------------------------------------------------------


async def test_a_websocket_takes_its_token_as_a_subprotocol_and_answers_servd(tmp_path):
    """Browsers can't set headers on a websocket: the console offers ["servd", "servd.bearer.<base64url
    token>"]. servd checks the token and answers "servd" (never echoing the token); a wrong one is
    refused with 401 before the upgrade."""
    (tmp_path / "tokens.txt").write_text(TOKEN + "\n")
    async with serve(tmp_path, TOKENS) as d:
        conn = await websocket_connect(f"{d.ws_url}/v1/ws", subprotocols=["servd", subprotocol(TOKEN)])
        assert conn.selected_subprotocol == "servd"
        client = WsClient(conn)
        await client.submit(1, "echo", "over a subprotocol token")
        assert (await client.terminal(1))["data"] == "over a subprotocol token"
        client.close()
        with pytest.raises(HTTPClientError) as refused:
            await websocket_connect(f"{d.ws_url}/v1/ws", subprotocols=["servd", subprotocol("wrong")])
        assert refused.value.code == 401
        with pytest.raises(HTTPClientError):
            await websocket_connect(f"{d.ws_url}/v1/ws", subprotocols=["servd", "servd.bearer.!!not-base64!!"])


# -- the OpenAPI document ---------------------------------------------------------------------------


async def test_openapi_json_is_a_valid_openapi_3_1_document_of_the_running_config(tmp_path):
    """One path per endpoint: its request body's data is its input_schema (a component, its own
    $refs rewritten to resolve inside it), its answers are the error codes its settings allow; an api_open:
    false endpoint answers 403 api_closed; the operator routes are listed too."""
    async with serve(tmp_path, PLAIN) as d:
        doc = (await d.http("GET", "/openapi.json")).json()
    validate_openapi(doc)
    assert doc["openapi"] == "3.1.0"
    typed = doc["paths"]["/v1/endpoints/typed"]["post"]
    data = typed["requestBody"]["content"]["application/json"]["schema"]["properties"]["data"]
    assert data == {"$ref": "#/components/schemas/typed.input"}
    schema = doc["components"]["schemas"]["typed.input"]
    assert schema["properties"]["tree"] == {"$ref": "#/components/schemas/typed.input/$defs/tree"}
    example = typed["requestBody"]["content"]["application/json"]["examples"]["example"]["value"]["data"]
    root = {"$ref": "#/components/schemas/typed.input", "components": doc["components"]}
    jsonschema.validate(example, root)
    jsonschema.validate({"n": 1, "tree": [1.5]}, root)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"n": 1, "tree": ["not a number"]}, root)
    codes = {c for r in typed["responses"].values() if "content" in r and "error" in json.dumps(r) for c in _codes(r)}
    assert {"invalid_input", "queue_full", "client_limit", "bad_request", "endpoint_failed"} <= codes
    assert "unauthorized" not in codes, "no tokens configured"
    echo = doc["paths"]["/v1/endpoints/echo"]["post"]["responses"]
    assert not {"invalid_input", "client_limit", "queue_full"} & {c for r in echo.values() for c in _codes(r)}
    closed = doc["paths"]["/v1/endpoints/closed"]["post"]
    assert list(closed["responses"]) == ["403"] and "api_closed" in _codes(closed["responses"]["403"])
    assert "closed.input" in doc["components"]["schemas"], "the websocket's data is documented for it too"
    assert {"/v1/ws", "/v1/events", "/v1/status", "/openapi.json", "/healthz"} <= set(doc["paths"])
    words = {c["const"] for c in doc["components"]["schemas"]["ErrorCode"]["oneOf"]}
    assert words == {code.word for code in ErrorCode}


def _codes(response: dict[str, Any]) -> list[str]:
    schema = response.get("content", {}).get("application/json", {}).get("schema", {})
    return schema.get("properties", {}).get("error", {}).get("properties", {}).get("code", {}).get("enum", [])  # type: ignore[no-any-return]


async def test_openapi_json_follows_reloads_and_with_tokens_needs_one_and_declares_bearer(tmp_path):
    """With tokens, /openapi.json needs one (401 without); an endpoint added to servd.yaml appears in it after
    the reload; it declares bearer security, lists unauthorized among each endpoint's answers, and leaves the
    probes open."""
    (tmp_path / "tokens.txt").write_text(TOKEN + "\n")
    async with serve(tmp_path, TOKENS) as d:
        assert (await d.http("GET", "/openapi.json")).status == 401
        before = (await d.http("GET", "/openapi.json", headers=AUTH)).json()
        save_atomic(d.config_path, TOKENS + "  words:\n    entrypoint: examples.stream:words\n")
        await eventually(lambda: d.daemon.generation == 2, "the reload")
        after = (await d.http("GET", "/openapi.json", headers=AUTH)).json()
    validate_openapi(after)
    assert "/v1/endpoints/words" not in before["paths"] and "/v1/endpoints/words" in after["paths"]
    assert after["security"] == [{"bearer": []}]
    assert after["paths"]["/healthz"]["get"]["security"] == [], "probes need no token"
    assert "unauthorized" in _codes(after["paths"]["/v1/endpoints/echo"]["post"]["responses"]["401"])


def test_every_error_code_has_plain_words():
    """Every error code has a short sentence in plain words, which the console shows beside the server's message."""
    assert set(openapi.ERROR_WORDS) == set(ErrorCode)
    assert all(words.endswith(".") and len(words) < 120 for words in openapi.ERROR_WORDS.values())


def test_the_console_ships_as_package_data():
    """setup.cfg installs servd/web/console/* with the package (tests/test_install.py installs it)."""
    setup = (Path(__file__).resolve().parent.parent / "setup.cfg").read_text()
    assert re.search(r"^servd.web = console/\*$", setup, re.M)
    assert {"index.html", "app.js", "console.css"} <= set(assets())
