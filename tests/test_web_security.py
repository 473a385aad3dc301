"""Browsers: Origin and Host checks on every route, CORS, and a real browser ("foundations" issue, part A).

Without tokens any web page can make its visitor's browser call a servd it can reach: a
cross-site page names itself in Origin (server.allowed_origins decides), a DNS-rebinding page
doesn't, but its Host header names a host the daemon doesn't answer to (server.allowed_hosts).
The daemon tests send those headers with a real HTTP client; the browser test has Chromium load
pages from other origins that call servd with fetch(), EventSource-style SSE and websockets.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
from typing import Any

import pytest
from tornado.httpclient import HTTPClientError
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler

from servd.web import guard as webguard
from tests.harness import Reply, eventually, serve

ECHO = """
version: 1
server:
  {server}
endpoints:
  echo:
    entrypoint: examples.echo:echo
"""
ORIGINS = ECHO.format(server='allowed_origins: ["https://app.example", "http://localhost:3000"]')
OPEN = ECHO.format(server="max_connections: 100")  # defaults: same origin only, the loopback names
TOKENS = ECHO.format(server='allowed_origins: ["https://app.example"]\n  tokens_file: tokens.txt')


def error_of(reply: Reply) -> dict[str, Any]:
    body = reply.json()
    assert set(body) == {"error"}, body
    return body["error"]  # type: ignore[no-any-return]


def ran(d: Any) -> list[str]:
    """Outcomes of the requests the daemon admitted (one "request" log event each)."""
    return [e["outcome"] for e in d.log_events() if e.get("event") == "request"]


# -- the rules, as plain functions -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "name"),
    [("localhost:8700", "localhost"), ("LocalHost", "localhost"), ("127.0.0.1:1", "127.0.0.1"),
     ("[::1]:8700", "::1"), ("[::1]", "::1"), ("example.com.:80", "example.com"), ("::1", "::1")],
)  # fmt: skip
def test_hostname_is_the_host_headers_name_without_port_brackets_case_or_final_dot(header, name):
    assert webguard.hostname(header) == name


@pytest.mark.parametrize(
    ("listen", "names"),
    [("127.0.0.1", ("localhost", "127.0.0.1", "::1")), ("::1", ("localhost", "127.0.0.1", "::1")),
     ("localhost", ("localhost", "127.0.0.1", "::1")), ("127.0.0.5", ("localhost", "127.0.0.1", "::1", "127.0.0.5")),
     ("10.1.2.3", ("localhost", "127.0.0.1", "::1", "10.1.2.3")), ("0.0.0.0", None), ("::", None)],
)  # fmt: skip
def test_the_default_hosts_are_what_the_listen_address_implies(listen, names):
    """A loopback or specific address answers to itself and the loopback names; 0.0.0.0 and :: to any."""
    assert webguard.default_hosts(listen) == names


@pytest.mark.parametrize(
    ("host", "allowed"),
    [("api.example", True), ("API.example:443", True), ("a.internal.example", True), ("a.b.internal.example", True),
     ("internal.example", False), ("evilinternal.example", False), ("localhost", False), ("api.example.evil", False)],
)  # fmt: skip
def test_allowed_hosts_holds_names_and_subdomain_patterns(host, allowed):
    """Entries are names (any port) or *.domain (its subdomains, not the domain itself); an explicit
    list replaces the defaults, loopback names included."""
    hosts = ("api.example", "*.internal.example:8700")
    assert webguard.host_allowed(host, hosts, "127.0.0.1") is allowed


def test_a_star_or_a_wildcard_listen_address_allows_any_host_and_a_missing_host_is_let_in():
    assert webguard.host_allowed("anything.example", ("*",), "127.0.0.1")
    assert webguard.host_allowed("anything.example", None, "0.0.0.0")
    assert webguard.host_allowed(None, None, "127.0.0.1")  # HTTP/1.0 without Host: not a browser


def test_an_origin_is_allowed_when_listed_exactly_or_when_it_is_the_server_itself():
    listed = ("https://app.example",)
    assert webguard.origin_allowed("https://app.example", listed)
    assert not webguard.origin_allowed("https://app.example:443", listed)
    assert not webguard.origin_allowed("http://app.example", listed)
    assert webguard.origin_allowed("http://127.0.0.1:8700", listed, "127.0.0.1:8700")  # same origin
    assert not webguard.origin_allowed("http://127.0.0.1:9999", listed, "127.0.0.1:8700")
    assert webguard.origin_allowed("null", ("*",))


# -- Origin on every HTTP route ---------------------------------------------------------------------

ROUTES = [("POST", "/v1/endpoints/echo"), ("GET", "/v1/endpoints/echo"), ("GET", "/v1/endpoints"),
          ("GET", "/v1/status"), ("GET", "/metrics"), ("GET", "/healthz"), ("GET", "/readyz"),
          ("GET", "/nowhere")]  # fmt: skip


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_an_http_request_from_an_origin_not_listed_is_refused_with_403(tmp_path, method, path):
    """A request whose Origin isn't in allowed_origins gets 403 forbidden_origin on every route,
    naming the origin and the setting, and without the CORS header that would let the page read it.
    Regression: allowed_origins guarded websockets only, so any page could POST to the models."""
    async with serve(tmp_path, ORIGINS) as d:
        body = {"data": "from evil"} if method == "POST" else None
        reply = await d.http(method, path, body, headers={"Origin": "https://evil.example"})
        assert reply.status == 403
        error = error_of(reply)
        assert error["code"] == "forbidden_origin"
        assert "'https://evil.example'" in error["message"] and "server.allowed_origins" in error["message"]
        assert "Access-Control-Allow-Origin" not in reply.headers
        assert ran(d) == []


async def test_a_listed_origin_is_served_and_may_read_the_answer(tmp_path):
    """A listed Origin is served, with Access-Control-Allow-Origin naming it (and Vary: Origin), on
    the result, the operator GETs, and errors too, so the page can read why."""
    async with serve(tmp_path, ORIGINS) as d:
        origin = {"Origin": "https://app.example"}
        replies = [
            await d.post("echo", "hi", headers=origin),
            await d.http("GET", "/v1/status", headers=origin),
            await d.post("nope", 1, headers=origin),
            await d.http("PUT", "/v1/endpoints/echo", 1, origin),
        ]
        assert [r.status for r in replies] == [200, 200, 404, 405]
        assert replies[0].json()["data"] == "hi"
        for reply in replies:
            assert reply.headers["Access-Control-Allow-Origin"] == "https://app.example"
            assert reply.headers["Vary"] == "Origin"
            assert "Retry-After" in reply.headers["Access-Control-Expose-Headers"]


async def test_a_listed_origin_gets_the_cors_header_on_an_sse_stream(tmp_path):
    """POST with Accept: text/event-stream from a listed Origin: the stream carries the CORS header."""
    async with serve(tmp_path, ORIGINS) as d:
        headers = {"Origin": "http://localhost:3000", "Accept": "text/event-stream"}
        reply = await d.post("echo", "streamed", headers=headers)
        assert reply.status == 200 and reply.headers["Content-Type"].startswith("text/event-stream")
        assert reply.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
        assert b"event: completed" in reply.body


async def test_requests_without_origin_are_not_browsers_and_get_no_cors_headers(tmp_path):
    async with serve(tmp_path, ORIGINS) as d:
        reply = await d.post("echo", "plain")
        assert reply.status == 200
        assert "Access-Control-Allow-Origin" not in reply.headers


async def test_by_default_a_cross_site_page_is_refused(tmp_path):
    """The default allowed_origins is [] (same origin only): a page elsewhere can neither call the
    models nor read an answer, over HTTP or the websocket (#11)."""
    async with serve(tmp_path, OPEN) as d:
        reply = await d.post("echo", 1, headers={"Origin": "https://anyone.example"})
        assert (reply.status, reply.json()["error"]["code"]) == (403, "forbidden_origin")
        assert "Access-Control-Allow-Origin" not in reply.headers
        with pytest.raises(HTTPClientError) as refused:
            await d.ws(headers={"Origin": "https://anyone.example"})
        assert refused.value.code == 403
        assert (await d.post("echo", 2, headers={"Origin": d.url})).status == 200, "same origin still works"


async def test_with_any_origin_allowed_the_answer_is_readable_by_any_page(tmp_path):
    """allowed_origins: ["*"]: any Origin is served with Access-Control-Allow-Origin: *."""
    async with serve(tmp_path, ECHO.format(server='allowed_origins: ["*"]')) as d:
        reply = await d.post("echo", 1, headers={"Origin": "https://anyone.example"})
        assert reply.status == 200
        assert reply.headers["Access-Control-Allow-Origin"] == "*"
        assert "Vary" not in reply.headers


async def test_a_page_served_under_the_daemons_own_name_is_same_origin(tmp_path):
    """An Origin that is the request's own Host (scheme aside) is the same origin, allowed unlisted."""
    async with serve(tmp_path, ORIGINS) as d:
        reply = await d.post("echo", 1, headers={"Origin": d.url})
        assert reply.status == 200


# -- CORS preflights ----------------------------------------------------------------------------

PREFLIGHT = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type"}


async def test_a_preflight_from_a_listed_origin_is_answered_204_without_a_token(tmp_path):
    """OPTIONS with Access-Control-Request-Method from a listed Origin: 204 allowing the route's
    methods and Authorization, Content-Type and Accept, cached for a while; no token needed (browsers
    never send one on a preflight)."""
    (tmp_path / "tokens.txt").write_text("s3cret\n")
    async with serve(tmp_path, TOKENS) as d:
        reply = await d.http("OPTIONS", "/v1/endpoints/echo", headers={"Origin": "https://app.example", **PREFLIGHT})
        assert reply.status == 204 and reply.body == b""
        assert reply.headers["Access-Control-Allow-Origin"] == "https://app.example"
        assert reply.headers["Access-Control-Allow-Methods"] == "GET, POST, OPTIONS"
        allowed_headers = {h.strip().lower() for h in reply.headers["Access-Control-Allow-Headers"].split(",")}
        assert {"authorization", "content-type", "accept"} <= allowed_headers
        assert int(reply.headers["Access-Control-Max-Age"]) > 0
        answer = await d.post("echo", 1, headers={"Origin": "https://app.example", "Authorization": "Bearer s3cret"})
        assert answer.status == 200 and answer.headers["Access-Control-Allow-Origin"] == "https://app.example"


async def test_a_preflight_from_an_origin_not_listed_is_refused_with_403(tmp_path):
    async with serve(tmp_path, ORIGINS) as d:
        reply = await d.http("OPTIONS", "/v1/endpoints/echo", headers={"Origin": "https://evil.example", **PREFLIGHT})
        assert reply.status == 403
        assert error_of(reply)["code"] == "forbidden_origin"
        assert "Access-Control-Allow-Origin" not in reply.headers


async def test_a_plain_options_lists_the_routes_methods(tmp_path):
    async with serve(tmp_path, ORIGINS) as d:
        reply = await d.http("OPTIONS", "/v1/status")
        assert (reply.status, reply.headers["Allow"]) == (204, "GET, OPTIONS")


# -- websockets -----------------------------------------------------------------------------------


async def test_a_websocket_from_an_origin_not_listed_gets_a_json_403(tmp_path):
    """The websocket handshake follows the same rule and answers in the same shape."""
    async with serve(tmp_path, ORIGINS) as d:
        with pytest.raises(HTTPClientError) as refused:
            await d.ws("/v1/ws", headers={"Origin": "https://evil.example"})
        assert refused.value.code == 403 and refused.value.response is not None
        assert json.loads(refused.value.response.body)["error"]["code"] == "forbidden_origin"


# -- Host -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), [("POST", "/v1/endpoints/echo"), ("GET", "/v1/status"),
                                              ("GET", "/metrics"), ("GET", "/nowhere")])  # fmt: skip
async def test_a_host_the_daemon_does_not_answer_to_is_refused_with_421(tmp_path, method, path):
    """On 127.0.0.1 (the default) a Host of another name (what a DNS-rebinding page sends, with no
    Origin at all) gets 421 unknown_host naming the host and the setting; nothing runs."""
    async with serve(tmp_path, OPEN) as d:
        body = {"data": "rebound"} if method == "POST" else None
        reply = await d.http(method, path, body, headers={"Host": f"rebind.example:{d.port}"})
        assert reply.status == 421
        error = error_of(reply)
        assert error["code"] == "unknown_host"
        assert f"rebind.example:{d.port}" in error["message"] and "server.allowed_hosts" in error["message"]
        assert ran(d) == []


async def test_a_websocket_handshake_naming_another_host_is_refused_with_421(tmp_path):
    async with serve(tmp_path, OPEN) as d:
        with pytest.raises(HTTPClientError) as refused:
            await d.ws("/v1/ws", headers={"Host": f"rebind.example:{d.port}"})
        assert refused.value.code == 421
        assert len(d.daemon.connections) == 0


@pytest.mark.parametrize("host", ["localhost:{port}", "127.0.0.1:{port}", "[::1]:{port}", "LOCALHOST", "localhost."])
async def test_the_loopback_names_are_answered_on_a_loopback_daemon(tmp_path, host):
    async with serve(tmp_path, OPEN) as d:
        reply = await d.post("echo", "local", headers={"Host": host.format(port=d.port)})
        assert reply.status == 200, reply.body


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
async def test_probes_answer_whatever_the_host(tmp_path, path):
    """Kubelet probes send the pod's IP as Host: /healthz and /readyz skip the Host check."""
    async with serve(tmp_path, OPEN) as d:
        assert (await d.http("GET", path, headers={"Host": "10.244.1.7:8700"})).status == 200


async def test_allowed_hosts_replaces_the_defaults(tmp_path):
    """server.allowed_hosts: exactly the names listed (and *.domain's subdomains) are answered."""
    config = ECHO.format(server='allowed_hosts: ["api.example", "*.internal.example"]')
    async with serve(tmp_path, config) as d:
        hosts = ("api.example", "gpu1.internal.example:8700", "localhost", "internal.example")
        statuses = [(await d.post("echo", 1, headers={"Host": host})).status for host in hosts]
        assert statuses == [200, 200, 421, 421]


async def test_a_daemon_on_every_interface_answers_any_host_by_default(tmp_path):
    """host: 0.0.0.0 can't know the names it is reached by: any Host is answered (set allowed_hosts)."""
    async with serve(tmp_path, ECHO.format(server="host: 0.0.0.0")) as d:
        assert (await d.post("echo", 1, headers={"Host": "gpu-box.lan:8700"})).status == 200


# -- a real browser ------------------------------------------------------------------------------

CHROMIUM = os.environ.get("SERVD_CHROMIUM") or next(
    (path for name in ("chromium", "chromium-browser", "google-chrome") if (path := shutil.which(name))), None
)
BROWSER_WAIT_S = 90.0  # Chromium's first start on a small CI machine is slow

# Each document runs this with its own origin: four calls to servd, then a report to its own server.
PAGE = """<!doctype html><meta charset="utf-8"><body>
<script>
const params = new URLSearchParams(location.search);
const servd = params.get("servd"), scenario = params.get("scenario");
async function call(init) {
  try {
    const r = await fetch(servd + "/v1/endpoints/echo", init);
    return {status: r.status, body: await r.text()};
  } catch (e) { return {failed: String(e)}; }
}
function socket() {
  return new Promise(resolve => {
    let ws;
    try { ws = new WebSocket(servd.replace("http", "ws") + "/v1/ws"); }
    catch (e) { return resolve({failed: String(e)}); }
    ws.onopen = () => ws.send(JSON.stringify({type: "submit", id: 1, endpoint: "echo", data: scenario}));
    ws.onmessage = m => {
      const msg = JSON.parse(m.data);
      if (msg.type === "completed") { resolve({data: msg.data}); ws.close(); }
    };
    ws.onerror = () => resolve({failed: "websocket error"});
  });
}
(async () => {
  const json = {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify({data: scenario})};
  const sse = {method: "POST", headers: {"Content-Type": "application/json", "Accept": "text/event-stream"},
               body: JSON.stringify({data: scenario})};
  // a "simple" request (text/plain, no preflight): the cross-site POST a page could always send
  const simple = {method: "POST", mode: "no-cors", body: JSON.stringify({data: scenario})};
  const report = {scenario, origin: location.origin, json: await call(json), sse: await call(sse), ws: await socket(),
                  simple: await call(simple)};
  await fetch("/report", {method: "POST", body: JSON.stringify(report)});
})();
</script>
<!--frames-->
</body>"""


class Pages(RequestHandler):
    """The other origins' web server: serves PAGE (the top one with frames) and takes reports."""

    def initialize(self, reports: dict[str, Any], frames: str) -> None:
        self.reports = reports
        self.frames = frames

    def get(self) -> None:
        top = self.get_argument("scenario", "") == "allowed"
        self.finish(PAGE.replace("<!--frames-->", self.frames if top else ""))

    def post(self) -> None:
        report = json.loads(self.request.body)
        self.reports[report["scenario"]] = report


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (apt-get install chromium; .ci/run installs it)")
@pytest.mark.timeout(BROWSER_WAIT_S + 30)
async def test_a_real_browser_is_let_in_from_a_listed_origin_only(tmp_path):
    """Headless Chromium loads a page from a listed origin (127.0.0.1:P), which frames pages from
    an unlisted origin (localhost:P) and from a name the browser resolves to 127.0.0.1, as DNS
    rebinding makes it (rebind.test:P). Each calls servd with fetch() (JSON, so preflighted), fetch()
    of SSE, a websocket, and a "simple" no-cors POST that browsers send without asking (the
    cross-site request that used to run unchecked). The listed page reads its three answers; the
    unlisted one fails at each; the rebinding page calls servd by its own name, and although its
    origin is listed, the Host check refuses it. Only the listed page's four requests ran."""
    page_socket = bind_sockets(0, "127.0.0.1")
    page_port = page_socket[0].getsockname()[1]
    allowed = f"http://127.0.0.1:{page_port}"
    config = ECHO.format(server=f'allowed_origins: ["{allowed}", "http://rebind.test:{page_port}"]')
    reports: dict[str, Any] = {}
    async with serve(tmp_path, config) as d:
        servd = d.url
        frames = "".join(
            f'<iframe src="http://{host}:{page_port}/?scenario={name}&servd={servd_url}"></iframe>'
            for name, host, servd_url in (("refused", "localhost", servd),
                                          ("rebinding", "rebind.test", f"http://rebind.test:{d.port}"))
        )  # fmt: skip
        pages = Application([(r"/.*", Pages, {"reports": reports, "frames": frames})])
        server = HTTPServer(pages)
        server.add_sockets(page_socket)
        log = (tmp_path / "chromium.log").open("wb")
        browser = await asyncio.create_subprocess_exec(
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
            f"--user-data-dir={tmp_path / 'chromium'}", "--host-resolver-rules=MAP rebind.test 127.0.0.1",
            f"{allowed}/?scenario=allowed&servd={servd}",
            stdout=asyncio.subprocess.DEVNULL, stderr=log, start_new_session=True,
        )  # fmt: skip
        try:
            await eventually(lambda: len(reports) == 3, "three reports from the browser", timeout=BROWSER_WAIT_S)
        finally:
            os.killpg(browser.pid, signal.SIGKILL)
            await browser.wait()
            log.close()
            server.stop()
        outcomes = ran(d)
        metrics = (await d.http("GET", "/metrics")).body.decode()
    refusals = {reason: float(n) for reason, n in re.findall(r'^servd_rejected_total\{.*reason="(\w+)".*\} (\S+)$',
                                                              metrics, re.M)}  # fmt: skip
    listed, refused, rebinding = reports["allowed"], reports["refused"], reports["rebinding"]
    assert listed["json"]["status"] == 200, listed
    assert json.loads(listed["json"]["body"])["data"] == "allowed"
    assert "event: completed" in listed["sse"]["body"]
    assert listed["ws"] == {"data": "allowed"}
    assert refused["origin"] == f"http://localhost:{page_port}"
    assert all("failed" in refused[call] for call in ("json", "sse", "ws")), refused
    assert all("failed" in rebinding[call] for call in ("json", "sse", "ws")), rebinding
    assert outcomes == ["completed"] * 4, "only the listed page's four calls ran"
    assert refusals.get("forbidden_origin", 0) >= 4 and refusals.get("unknown_host", 0) >= 4, refusals
