"""The console is never blank (issue 24): the page carries its first snapshot.

GET / holds the event stream's first hello and status (and each endpoint's example request) as a
JSON data block, which the console draws before it opens the stream, and the overview as plain
HTML for readers without JavaScript. With tokens, only a request whose Authorization header holds
a valid one gets any of it. Headless Chromium (`--dump-dom`, Debian's package; .ci/run installs
it) checks what a screenshot or a crawler sees at load.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from servd.web import firstpaint
from tests.browser import CHROMIUM, Chromium, open_page
from tests.harness import Running, serve

CONFIG = """
version: 1
server:
  {server}
endpoints:
  echo:
    entrypoint: examples.echo:echo
    concurrency: 3
  words:
    entrypoint: examples.stream:words
  simple:
    entrypoint: examples.tensors:add_sub
    batch: {{max_size: 8, max_delay_ms: 2}}
    tensors:
      inputs:
        - {{name: INPUT0, datatype: INT32, shape: [-1, 4]}}
        - {{name: INPUT1, datatype: INT32, shape: [-1, 4]}}
      outputs:
        - {{name: OUTPUT0, datatype: INT32, shape: [-1, 4]}}
        - {{name: OUTPUT1, datatype: INT32, shape: [-1, 4]}}
"""
PLAIN = CONFIG.format(server="max_connections: 100")
TOKENS = CONFIG.format(server="tokens_file: tokens.txt")
TOKEN = "first-paint-token"
NAMES = ["echo", "words", "simple"]
DUMP_TIMEOUT_S = 60.0

needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (apt-get install chromium)")


def main_of(page: str) -> str:
    found = re.search(r"<main\b.*?</main>", page, re.S)
    assert found, "a <main> section"
    return found.group(0)


def rows_in(html: str) -> list[str]:
    return re.findall(r'<tr data-endpoint="([^"]+)"', html)


def first_state(page: str) -> Any:
    found = re.search(r'<script type="application/json" id="first-state">(.*?)</script>', page, re.S)
    assert found, "the first-state data block"
    return json.loads(found.group(1))


async def dump_dom(d: Running, directory: Path, *flags: str) -> str:
    """The page's DOM as headless Chromium has it after loading (the process runs beside this loop,
    which keeps serving it)."""
    process = await asyncio.create_subprocess_exec(
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
        f"--user-data-dir={directory / 'chromium-profile'}", *flags, "--dump-dom", d.url + "/",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        out, _ = await asyncio.wait_for(process.communicate(), DUMP_TIMEOUT_S)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return out.decode()


# -- what servd serves ------------------------------------------------------------------------------


async def test_the_page_carries_the_overview_as_data_and_as_plain_html(tmp_path):
    """GET / already shows every endpoint: its <main> holds the overview table (a row per endpoint,
    its worker count), and a JSON data block holds the stream's hello and status and each
    endpoint's example request, for the console to draw before its stream opens. A snapshot of
    live numbers is never cached (no-store), and no inline script runs (the block is data)."""
    async with serve(tmp_path, PLAIN) as d:
        page = await d.http("GET", "/")
    html = page.body.decode()
    assert page.status == 200 and page.headers["Cache-Control"] == "no-store"
    assert rows_in(main_of(html)) == NAMES
    assert '<td class="num" data-label="Workers" data-field="workers">0/3</td>' in main_of(html)
    state = first_state(html)
    assert [e["name"] for e in state["status"]["endpoints"]] == NAMES
    assert state["hello"]["type"] == "hello" and state["generation"] == 1
    assert state["examples"]["simple"]["data"] == {"INPUT0": [[1, 1, 1, 1]], "INPUT1": [[1, 1, 1, 1]]}
    assert 'id="live" role="status" aria-live="polite">snapshot<' in html


async def test_with_tokens_the_page_shows_nothing_of_the_deployment_without_a_valid_token(tmp_path):
    """tokens_file set: a browser loading the page (no Authorization header), a wrong token, or a
    token in the address get a page with no endpoint, no number and no example in it (the console
    asks for a token, as before); a script sending a valid token in the header gets the snapshot,
    and caches are told the answer varies with that header."""
    (tmp_path / "tokens.txt").write_text(TOKEN + "\n")
    async with serve(tmp_path, TOKENS) as d:
        bare = await d.http("GET", "/")
        wrong = await d.http("GET", "/", headers={"Authorization": "Bearer nope"})
        in_address = await d.http("GET", f"/?token={TOKEN}")
        given = await d.http("GET", "/", headers={"Authorization": f"Bearer {TOKEN}"})
    for reply in (bare, wrong, in_address):
        html = reply.body.decode()
        assert reply.status == 200 and 'data-auth="token"' in html
        assert not any(name in html for name in NAMES), "no endpoint named"
        assert first_state(html) is None and rows_in(html) == []
        assert "needs a token" in main_of(html)
        assert reply.headers["Vary"] == "Authorization"
    assert rows_in(main_of(given.body.decode())) == NAMES


def test_the_data_block_cannot_be_closed_by_what_it_carries():
    """A config path or schema text holding "</script><script>..." stays inside the data block: the
    JSON escapes <, > and & and still reads back as the same value."""
    value = {"config": "/srv/</script><script>alert(1)</script>", "text": "a & b <!-- c -->\u2028"}
    text = firstpaint.script_json(value)
    assert "<" not in text and ">" not in text and "&" not in text
    assert json.loads(text) == value


# -- what a browser shows at load -------------------------------------------------------------------


@needs_chromium
async def test_a_headless_browser_sees_every_endpoint_at_load(tmp_path):
    """`chromium --headless --dump-dom` with a virtual-time budget (what screenshots and crawlers
    see at load): the main section lists every endpoint, drawn by the console's script (its
    charts are there), not an empty page saying "connecting…"."""
    async with serve(tmp_path, PLAIN) as d:
        dom = await dump_dom(d, tmp_path, "--virtual-time-budget=3000")
    main = main_of(dom)
    assert rows_in(main) == NAMES, main[:500]
    assert 'class="spark' in main, "drawn by the console's script, charts and all"


@pytest.fixture(scope="module")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chromium]:
    browser = Chromium.launch(tmp_path_factory.mktemp("chromium"))
    yield browser
    browser.stop()


@needs_chromium
async def test_a_reader_without_javascript_sees_the_overview(tmp_path, chromium):
    """With JavaScript off, the page still shows the daemon's summary and a row per endpoint, and
    says it is the state at load."""
    async with serve(tmp_path, PLAIN) as d, open_page(chromium, "about:blank") as page:
        await page.send("Emulation.setScriptExecutionDisabled", {"value": True})
        await page.goto(d.url + "/")
        await page.wait("document.readyState === 'complete' && location.href.startsWith('http')", "the page loaded")
        dom = await page.eval("document.documentElement.outerHTML")
    main = main_of(dom)
    assert rows_in(main) == NAMES, main[:500]
    assert "<h1>Overview</h1>" in main and "the live console needs JavaScript" in main
    assert "Reloads" not in main, "drawn by servd, not by the console's script"
