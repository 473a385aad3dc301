"""Editing servd.yaml (or SIGHUP) retunes the running daemon; a bad edit changes nothing (issue #4).

Every test runs the real daemon in-process with its file watcher on (tests/harness.py) and edits
the file at `d.config_path`, some the way editors save (a temp file renamed over the config),
some in place. `d.daemon.request_reload()` is what SIGHUP calls. Tests wait on what a client
can observe (the generation and last reload in /v1/status, the endpoints in /v1/endpoints, the
messages of a request), polling with a bound, never for a fixed time. Calls that must stay
"running" wait on a gate (examples/versioned.py) that the test opens.
"""

from __future__ import annotations

import os
import re
import shutil
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from examples import versioned
from examples.versioned import Tagged
from tests.harness import Running, WsClient, eventually, serve

RELOAD_WAIT_S = 10.0  # generous: the machine may be loaded
LOCATION = re.compile(r"servd\.yaml:\d+:\d+")

# -- helpers --------------------------------------------------------------------------------


def yaml_text(text: str) -> str:
    return textwrap.dedent(text).lstrip()


def save_atomic(path: Path, text: str) -> None:
    """Save the way editors do: write a temp file next to the config, rename it over the config."""
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.swp")
    temp.write_text(yaml_text(text))
    os.replace(temp, path)


def save_in_place(path: Path, text: str) -> None:
    """Save by truncating and rewriting the config file itself."""
    with open(path, "w") as file:
        file.write(yaml_text(text))


async def status(d: Running) -> dict[str, Any]:
    return (await d.http("GET", "/v1/status")).json()


async def endpoints(d: Running) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in (await d.http("GET", "/v1/endpoints")).json()["endpoints"]}


async def metrics(d: Running) -> str:
    return (await d.http("GET", "/metrics")).body.decode()


async def wait_generation(d: Running, generation: int) -> dict[str, Any]:
    """Wait until the daemon serves config generation `generation`; returns /v1/status then."""

    async def probe() -> dict[str, Any] | None:
        current = await status(d)
        return current if current["generation"] >= generation else None

    return await eventually(probe, f"generation {generation}", timeout=RELOAD_WAIT_S)


async def wait_reload_after(d: Running, since: float) -> dict[str, Any]:
    """Wait for a reload (of any result) that ended after `since` (time.time()); returns its record."""

    async def probe() -> dict[str, Any] | None:
        last = (await status(d))["last_reload"]
        return last if last is not None and last["at"] > since else None

    return await eventually(probe, "a reload", timeout=RELOAD_WAIT_S)


def reloads_counted(text: str, result: str) -> float:
    match = re.search(rf'^servd_reloads_total\{{result="{result}"\}} (\S+)$', text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def kinds(ws: WsClient, id: Any) -> list[str]:
    return [m["type"] for m in ws.of(id)]


def index_of(ws: WsClient, id: Any, kind: str) -> int:
    """Position in the connection's message stream of request `id`'s first `kind` message."""
    return next(i for i, m in enumerate(ws.messages) if m.get("id") == id and m["type"] == kind)


def terminal_count(ws: WsClient, id: Any) -> int:
    return sum(1 for m in ws.of(id) if m["type"] in ("completed", "error"))


async def wait_started(ws: WsClient, id: Any) -> None:
    await ws.wait_for(lambda m: m.get("id") == id and m["type"] == "started")


async def wait_queued(ws: WsClient, id: Any) -> dict[str, Any]:
    return await ws.wait_for(lambda m: m.get("id") == id and m["type"] == "queued")


def unique_tag(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}"


def sleep_config(concurrency: int) -> str:
    return f"""
    version: 1
    endpoints:
      sleep:
        entrypoint: examples.faults:sleep
        concurrency: {concurrency}
    """


def gated_config(concurrency: int = 1, queue: str = "{max_size: 10}") -> str:
    return f"""
    version: 1
    server: {{drain_timeout_s: 5}}
    endpoints:
      gated:
        entrypoint: examples.versioned:gated
        concurrency: {concurrency}
        queue: {queue}
    """


ECHO_ENDPOINTS = "endpoints:\n  echo:\n    entrypoint: examples.echo:echo\n"
ECHO = "version: 1\n" + ECHO_ENDPOINTS

# -- limits ---------------------------------------------------------------------------------


async def test_concurrency_raised_from_1_to_4_runs_four_calls_at_once(tmp_path):
    """Before: one call at a time. After saving concurrency 4: /v1/endpoints says 4 and 4 calls overlap."""
    async with serve(tmp_path, sleep_config(1)) as d:
        ws = await d.ws()
        for id in ("before-1", "before-2"):
            await ws.submit(id, "sleep", {"s": 0.3})
        for id in ("before-1", "before-2"):
            await ws.terminal(id)
        assert index_of(ws, "before-2", "started") > index_of(ws, "before-1", "completed")

        save_atomic(d.config_path, sleep_config(4))
        await wait_generation(d, 2)
        shown = (await endpoints(d))["sleep"]
        assert shown["concurrency"] == 4
        assert shown["stats"]["workers_max"] == 4

        ids = [f"after-{i}" for i in range(4)]
        began = time.perf_counter()
        for id in ids:
            await ws.submit(id, "sleep", {"s": 0.5})
        done = [await ws.terminal(id) for id in ids]
        took = time.perf_counter() - began
        assert [m["type"] for m in done] == ["completed"] * 4
        last_started = max(index_of(ws, id, "started") for id in ids)
        first_completed = min(index_of(ws, id, "completed") for id in ids)
        assert last_started < first_completed, f"the 4 calls did not overlap (took {took:.2f}s)"


async def test_raised_concurrency_starts_queued_requests_at_once(tmp_path, gates):
    """Requests already waiting start as soon as the new slots exist, while the first call still runs."""
    gate = gates()
    async with serve(tmp_path, gated_config(1)) as d:
        ws = await d.ws()
        for id in ("a", "b", "c"):
            await ws.submit(id, "gated", {"gate": gate})
        await wait_started(ws, "a")
        await wait_queued(ws, "c")
        assert "started" not in kinds(ws, "b")

        save_in_place(d.config_path, gated_config(3))
        await wait_generation(d, 2)
        await wait_started(ws, "b")
        await wait_started(ws, "c")
        assert terminal_count(ws, "a") == 0

        versioned.open_gate(gate)
        assert [(await ws.terminal(id))["type"] for id in ("a", "b", "c")] == ["completed"] * 3


async def test_lowered_concurrency_lets_running_calls_finish(tmp_path, gates):
    """3 -> 1 while three calls run: all three complete; what was queued then runs one at a time."""
    gate = gates()
    async with serve(tmp_path, gated_config(3)) as d:
        ws = await d.ws()
        for id in ("a", "b", "c"):
            await ws.submit(id, "gated", {"gate": gate})
        for id in ("a", "b", "c"):
            await wait_started(ws, id)

        save_atomic(d.config_path, gated_config(1))
        await wait_generation(d, 2)
        assert (await endpoints(d))["gated"]["stats"]["workers_max"] == 1
        await ws.submit("d", "gated", {"s": 0.05})
        await ws.submit("e", "gated", {"s": 0.05})
        await wait_queued(ws, "e")
        assert terminal_count(ws, "a") == 0

        versioned.open_gate(gate)
        ended = [await ws.terminal(id) for id in ("a", "b", "c", "d", "e")]
        assert [m["type"] for m in ended] == ["completed"] * 5
        assert index_of(ws, "e", "started") > index_of(ws, "d", "completed")


def batch_config(max_size: int) -> str:
    return f"""
    version: 1
    server: {{drain_timeout_s: 5}}
    endpoints:
      batched:
        entrypoint: examples.versioned:gated_batch
        concurrency: 1
        batch: {{max_size: {max_size}, max_delay_ms: 0}}
    """


async def run_behind_a_blocker(ws: WsClient, gate: str, prefix: str, count: int) -> list[int]:
    """Hold the one slot with a gated call, queue `count` requests behind it, release; their batch sizes."""
    await ws.submit(f"{prefix}-blocker", "batched", {"gate": gate})
    await wait_started(ws, f"{prefix}-blocker")
    ids = [f"{prefix}-{i}" for i in range(count)]
    for id in ids:
        await ws.submit(id, "batched", id)
    for id in ids:
        await wait_queued(ws, id)
    versioned.open_gate(gate)
    done = [await ws.terminal(id) for id in [f"{prefix}-blocker", *ids]]
    assert [m["type"] for m in done] == ["completed"] * (count + 1)
    return [m["timing"]["batch_size"] for m in done[1:]]


async def test_batch_max_size_change_takes_effect(tmp_path, gates):
    """Six queued requests run in batches of 2; after saving batch.max_size 6 they run as one batch of 6."""
    async with serve(tmp_path, batch_config(2)) as d:
        ws = await d.ws()
        assert await run_behind_a_blocker(ws, gates(), "before", 6) == [2] * 6

        save_atomic(d.config_path, batch_config(6))
        await wait_generation(d, 2)
        shown = (await endpoints(d))["batched"]
        assert shown["batch"]["max_size"] == 6
        assert shown["stats"]["batch_size"] == 6
        assert await run_behind_a_blocker(ws, gates(), "after", 6) == [6] * 6


async def test_queued_requests_keep_their_place_across_a_limits_reload(tmp_path, gates):
    """Three requests wait behind a running one; a limits reload neither reorders nor re-ranks them."""
    gate = gates()
    async with serve(tmp_path, gated_config(1, "{max_size: 10}")) as d:
        ws = await d.ws()
        await ws.submit("running", "gated", {"gate": gate})
        await wait_started(ws, "running")
        waiting = ["w0", "w1", "w2"]
        for id in waiting:
            await ws.submit(id, "gated", id)
        assert [(await wait_queued(ws, id))["rank"] for id in waiting] == [0, 1, 2]

        save_in_place(d.config_path, gated_config(1, "{max_size: 20, timeout_s: 60}"))
        await wait_generation(d, 2)
        shown = (await endpoints(d))["gated"]["queue"]
        assert (shown["max_size"], shown["timeout_s"], shown["max_per_client"]) == (20, 60, None)
        assert (await endpoints(d))["gated"]["stats"]["queued"] == 3

        versioned.open_gate(gate)
        await ws.terminal("running")
        released = index_of(ws, "running", "completed")
        for id in waiting:
            assert (await ws.terminal(id))["type"] == "completed"
        assert [index_of(ws, id, "started") for id in waiting] == sorted(index_of(ws, id, "started") for id in waiting)
        before_release = ws.messages[:released]
        assert [m for m in before_release if m["type"] == "estimation" and m["id"] in waiting] == []


async def test_queue_max_size_lowered_below_depth_rejects_only_new_requests(tmp_path, gates):
    """Four wait, max_size drops to 2: all four still run; a new request gets queue_full."""
    gate = gates()
    async with serve(tmp_path, gated_config(1, "{max_size: 10}")) as d:
        ws = await d.ws()
        await ws.submit("running", "gated", {"gate": gate})
        await wait_started(ws, "running")
        waiting = [f"w{i}" for i in range(4)]
        for id in waiting:
            await ws.submit(id, "gated", id)
            await wait_queued(ws, id)

        save_atomic(d.config_path, gated_config(1, "{max_size: 2}"))
        await wait_generation(d, 2)
        await ws.submit("new", "gated", "new")
        refused = await ws.terminal("new")
        assert refused["error"]["code"] == "queue_full"
        assert "queue.max_size=2" in refused["error"]["message"]
        assert (await endpoints(d))["gated"]["stats"]["queued"] == 4

        versioned.open_gate(gate)
        for id in ["running", *waiting]:
            assert (await ws.terminal(id))["type"] == "completed"
            assert terminal_count(ws, id) == 1


async def test_api_open_false_closes_http_and_keeps_the_websocket(tmp_path):
    """After saving api_open: false, POST gets 403 api_closed; the websocket queue still serves."""
    async with serve(tmp_path, ECHO) as d:
        assert (await d.post("echo", 1)).status == 200
        save_atomic(d.config_path, ECHO + "    api_open: false\n")
        await wait_generation(d, 2)
        reply = await d.post("echo", 1)
        assert reply.status == 403
        assert reply.json()["error"]["code"] == "api_closed"
        ws = await d.ws()
        await ws.submit(1, "echo", "still here")
        assert (await ws.terminal(1))["data"] == "still here"


async def test_input_schema_added_checks_new_requests(tmp_path):
    """After saving an input_schema, data that fails it gets invalid_input; good data still runs."""
    async with serve(tmp_path, ECHO) as d:
        save_in_place(d.config_path, ECHO + "    input_schema: {type: integer}\n")
        await wait_generation(d, 2)
        ws = await d.ws()
        await ws.submit("bad", "echo", "text")
        await ws.submit("good", "echo", 3)
        assert (await ws.terminal("bad"))["error"]["code"] == "invalid_input"
        assert (await ws.terminal("good"))["data"] == 3


async def test_max_threads_change_is_applied_live(tmp_path):
    """server.max_threads applies without a restart; /v1/status shows the new value and no restart needed."""
    async with serve(tmp_path, "version: 1\nserver: {max_threads: 8}\n" + ECHO_ENDPOINTS) as d:
        save_atomic(d.config_path, "version: 1\nserver: {max_threads: 16}\n" + ECHO_ENDPOINTS)
        shown = await wait_generation(d, 2)
        assert shown["server"]["max_threads"] == 16
        assert shown["restart_needed"] == []
        assert (await d.post("echo", "ok")).json()["data"] == "ok"


async def test_log_level_change_is_applied_live(tmp_path):
    """server.log.level warning: request events stop being logged from the next request on."""
    body = ECHO_ENDPOINTS
    async with serve(tmp_path, "version: 1\nserver: {log: {level: info}}\n" + body) as d:
        assert (await d.post("echo", "logged")).status == 200
        save_atomic(d.config_path, "version: 1\nserver: {log: {level: warning}}\n" + body)
        await wait_generation(d, 2)
        assert (await d.post("echo", "quiet")).status == 200
        requests = [e for e in d.log_events() if e["event"] == "request"]
        assert len(requests) == 1


# -- invalid edits --------------------------------------------------------------------------

BROKEN = {
    "yaml_syntax": ("invalid", "version: 1\nendpoints:\n  echo:\n    entrypoint: [examples.echo:echo\n", "YAML"),
    "schema": ("invalid", ECHO + "    concurrency: 0\n", "endpoints.echo.concurrency"),
    "import": ("invalid", ECHO + "  other:\n    entrypoint: examples.no_such_module:fn\n", "no_such_module"),
    "load_raises": ("failed", ECHO + "  broken:\n    entrypoint: examples.faults:FailsToLoad\n", "weights file"),
}


@pytest.mark.parametrize("kind", list(BROKEN))
async def test_an_invalid_edit_keeps_the_old_spec_serving_and_is_reported(tmp_path, kind):
    """A bad file changes nothing: same generation, old endpoints serve, status and metrics say why and where."""
    result, text, mentions = BROKEN[kind]
    async with serve(tmp_path, ECHO, expect_errors=True) as d:
        since = time.time()
        save_atomic(d.config_path, text)
        last = await wait_reload_after(d, since)
        assert last["result"] == result
        assert mentions in last["error"]
        assert LOCATION.search(last["error"]), f"no file:line:col in {last['error']!r}"
        current = await status(d)
        assert current["generation"] == 1
        assert current["endpoints"] == ["echo"]
        assert (await d.post("echo", "still serving")).json()["data"] == "still serving"
        assert reloads_counted(await metrics(d), result) == 1
        assert reloads_counted(await metrics(d), "applied") == 0
        logged = [e for e in d.log_events() if e["event"] == "reload"]
        assert [(e["level"], e["result"]) for e in logged] == [("error", result)]


async def test_a_valid_edit_after_an_invalid_one_applies(tmp_path):
    """The daemon keeps watching after a bad save: fixing the file applies it."""
    async with serve(tmp_path, ECHO, expect_errors=True) as d:
        since = time.time()
        save_in_place(d.config_path, ECHO + "    concurrency: -3\n")
        assert (await wait_reload_after(d, since))["result"] == "invalid"
        save_in_place(d.config_path, ECHO + "    concurrency: 3\n")
        shown = await wait_generation(d, 2)
        assert shown["last_reload"]["result"] == "applied"
        assert (await endpoints(d))["echo"]["concurrency"] == 3


async def test_every_reload_is_logged_once_and_counted(tmp_path):
    """One applied and one invalid reload: two reload log events, and servd_reloads_total by result."""
    async with serve(tmp_path, ECHO, expect_errors=True) as d:
        save_atomic(d.config_path, ECHO + "    concurrency: 2\n")
        await wait_generation(d, 2)
        since = time.time()
        save_atomic(d.config_path, ECHO + "    concurrency: zero\n")
        await wait_reload_after(d, since)
        text = await metrics(d)
        assert reloads_counted(text, "applied") == 1
        assert reloads_counted(text, "invalid") == 1
        assert "servd_config_generation 2.0" in text
        logged = [(e["result"], e["generation"]) for e in d.log_events() if e["event"] == "reload"]
        assert logged == [("applied", 2), ("invalid", 2)]


# -- endpoints added and removed --------------------------------------------------------------


async def test_an_added_endpoint_serves_after_the_reload(tmp_path):
    """A new endpoint in the file is listed and answers once the reload is applied."""
    async with serve(tmp_path, ECHO) as d:
        assert (await d.post("words", {"text": "a b"})).json()["error"]["code"] == "unknown_endpoint"
        save_atomic(d.config_path, ECHO + "  words:\n    entrypoint: examples.stream:words\n")
        shown = await wait_generation(d, 2)
        assert shown["endpoints"] == ["echo", "words"]
        assert shown["last_reload"]["changes"]["added"] == ["words"]
        assert "words" in await endpoints(d)
        assert (await d.post("words", {"text": "a b"})).json()["data"] == "a b"


def removable_config(tag: str, with_slow: bool) -> str:
    text = "version: 1\nserver: {drain_timeout_s: 2}\n" + ECHO_ENDPOINTS
    if with_slow:
        text += f"  slow:\n    entrypoint: examples.versioned:Tagged\n    options: {{tag: {tag}}}\n    concurrency: 1\n"
    return text


async def test_a_removed_endpoint_finishes_what_it_admitted_then_goes(tmp_path, gates):
    """Removed: running and queued requests complete, new ones get unavailable, then unknown_endpoint."""
    gate, tag = gates(), unique_tag("removed")
    async with serve(tmp_path, removable_config(tag, True)) as d:
        ws = await d.ws()
        await ws.submit("running", "slow", {"gate": gate})
        await wait_started(ws, "running")
        await ws.submit("queued", "slow", "queued")
        await wait_queued(ws, "queued")

        save_atomic(d.config_path, removable_config(tag, False))
        shown = await wait_generation(d, 2)
        assert shown["endpoints"] == ["echo"]
        assert "slow" not in await endpoints(d)
        await ws.submit("late", "slow", "late")
        late = await ws.terminal("late")
        assert late["error"]["code"] == "unavailable"
        assert "removed" in late["error"]["message"]

        versioned.open_gate(gate)
        assert (await ws.terminal("running"))["data"]["tag"] == tag
        assert (await ws.terminal("queued"))["data"] == {"tag": tag, "data": "queued"}
        tries = iter(range(500))

        async def gone() -> bool:
            id = f"probe-{next(tries)}"
            await ws.submit(id, "slow", id)
            return (await ws.terminal(id))["error"]["code"] == "unknown_endpoint"

        await eventually(gone, "the removed endpoint to be gone", timeout=RELOAD_WAIT_S)
        await eventually(lambda: Tagged.seen("closed", tag) == 1, "the removed model's close()", timeout=RELOAD_WAIT_S)


async def test_an_endpoint_removed_twice_while_draining_still_ends_every_request_at_shutdown(tmp_path, gates):
    """Remove, re-add and remove again while the first copy drains; shutdown still ends both copies' requests."""
    gate, first, second = gates(), unique_tag("first"), unique_tag("second")
    async with serve(tmp_path, removable_config(first, True)) as d:
        ws = await d.ws()
        await ws.submit("on-first", "slow", {"gate": gate})
        await wait_started(ws, "on-first")
        save_atomic(d.config_path, removable_config(first, False))
        await wait_generation(d, 2)
        save_atomic(d.config_path, removable_config(second, True))
        await wait_generation(d, 3)
        await ws.submit("on-second", "slow", {"gate": gate})
        await wait_started(ws, "on-second")
        save_atomic(d.config_path, removable_config(second, False))
        await wait_generation(d, 4)

        await d.daemon.shutdown()  # drain_timeout_s 2, the gate stays shut
        await ws.wait_closed()
        for id in ("on-first", "on-second"):
            assert terminal_count(ws, id) == 1, f"{id}: {ws.of(id)}"
            assert ws.of(id)[-1]["error"]["code"] == "unavailable"


# -- models ---------------------------------------------------------------------------------


def tagged_config(tag: str, entrypoint: str = "examples.versioned:Tagged") -> str:
    return f"""
    version: 1
    server: {{drain_timeout_s: 5}}
    endpoints:
      tagged:
        entrypoint: {entrypoint}
        options: {{tag: {tag}}}
        concurrency: 1
    """


async def test_model_swap_serves_new_requests_and_closes_the_old_model_after_its_calls(tmp_path, gates):
    """options change: new requests see the new model at once; the old one finishes its call, then close()."""
    gate, old, new = gates(), unique_tag("old"), unique_tag("new")
    async with serve(tmp_path, tagged_config(old)) as d:
        ws = await d.ws()
        await ws.submit("long", "tagged", {"gate": gate})
        await wait_started(ws, "long")

        save_atomic(d.config_path, tagged_config(new))
        shown = await wait_generation(d, 2)
        assert shown["last_reload"]["changes"]["remodeled"] == ["tagged"]
        await ws.submit("fresh", "tagged", "hi")
        assert (await ws.terminal("fresh"))["data"] == {"tag": new, "data": "hi"}
        assert terminal_count(ws, "long") == 0
        assert Tagged.seen("closed", old) == 0

        versioned.open_gate(gate)
        assert (await ws.terminal("long"))["data"]["tag"] == old
        await eventually(lambda: Tagged.seen("closed", old) == 1, "the old model's close()", timeout=RELOAD_WAIT_S)
        with Tagged.lock:
            events = list(Tagged.events)
        assert events.index(("called", old)) < events.index(("closed", old))
        assert Tagged.seen("closed", new) == 0


async def test_a_failed_model_swap_leaves_the_old_model_serving(tmp_path):
    """The new model's constructor raises: status says failed, where and why; the old model still answers."""
    old = unique_tag("old")
    async with serve(tmp_path, tagged_config(old), expect_errors=True) as d:
        since = time.time()
        save_atomic(d.config_path, tagged_config(old, "examples.faults:FailsToLoad"))
        last = await wait_reload_after(d, since)
        assert last["result"] == "failed"
        assert "FailsToLoad" in last["error"]
        assert (await status(d))["generation"] == 1
        assert (await d.post("tagged", 1)).json()["data"] == {"tag": old, "data": 1}
        assert Tagged.seen("closed", old) == 0


def write_module(path: Path, returns: str, *, age_s: float = 0.0) -> None:
    path.write_text(f"def version(data):\n    return {returns!r}\n")
    if age_s:
        stamp = time.time() - age_s
        os.utime(path, (stamp, stamp))


def module_config(module: str) -> str:
    return f"""
    version: 1
    endpoints:
      code:
        entrypoint: {module}:version
    """


async def test_sighup_deploys_edited_model_code(tmp_path):
    """Edit the module next to servd.yaml, send SIGHUP: new requests run the new code."""
    module = f"deployed_{uuid.uuid4().hex[:8]}"
    write_module(tmp_path / f"{module}.py", "old code", age_s=60)
    async with serve(tmp_path, module_config(module)) as d:
        assert (await d.post("code", None)).json()["data"] == "old code"
        write_module(tmp_path / f"{module}.py", "new code, redeployed")
        d.daemon.request_reload()
        shown = await wait_generation(d, 2)
        assert shown["last_reload"]["changes"]["remodeled"] == ["code"]
        assert (await d.post("code", None)).json()["data"] == "new code, redeployed"


async def test_saving_the_yaml_deploys_edited_model_code(tmp_path):
    """Edit the module, then save servd.yaml (any change): the reload imports the module afresh."""
    module = f"deployed_{uuid.uuid4().hex[:8]}"
    write_module(tmp_path / f"{module}.py", "old code", age_s=60)
    async with serve(tmp_path, module_config(module)) as d:
        assert (await d.post("code", None)).json()["data"] == "old code"
        write_module(tmp_path / f"{module}.py", "new code, redeployed")
        save_atomic(d.config_path, yaml_text(module_config(module)) + "# deployed\n")
        await wait_generation(d, 2)
        assert (await d.post("code", None)).json()["data"] == "new code, redeployed"


async def test_sighup_with_nothing_changed_reloads_and_changes_nothing(tmp_path):
    """SIGHUP always reloads: the generation goes up, the plan is empty, requests are unaffected."""
    async with serve(tmp_path, ECHO) as d:
        d.daemon.request_reload()
        shown = await wait_generation(d, 2)
        assert shown["last_reload"]["result"] == "applied"
        assert not any(shown["last_reload"]["changes"].values())
        assert (await d.post("echo", 1)).json()["data"] == 1


async def test_edited_code_deploys_after_a_failed_reload_is_fixed(tmp_path):
    """Module edited and a typo saved in the same deploy: once the typo is fixed, the new code serves.

    The failed reload already imported the edited module; that must not make servd forget that
    the model it serves was built from the old code.
    """
    module = f"deployed_{uuid.uuid4().hex[:8]}"
    write_module(tmp_path / f"{module}.py", "old code", age_s=60)
    good = yaml_text(module_config(module))
    async with serve(tmp_path, good, expect_errors=True) as d:
        write_module(tmp_path / f"{module}.py", "new code, redeployed")
        since = time.time()
        save_atomic(d.config_path, good + "  typo:\n    entrypoint: examples.no_such_module:fn\n")
        assert (await wait_reload_after(d, since))["result"] == "invalid"
        assert (await d.post("code", None)).json()["data"] == "old code"

        save_atomic(d.config_path, good)
        await wait_generation(d, 2)
        assert (await d.post("code", None)).json()["data"] == "new code, redeployed"


# -- server ---------------------------------------------------------------------------------


def port_config(port: int) -> str:
    return f"version: 1\nserver: {{host: 127.0.0.1, port: {port}}}\n" + ECHO_ENDPOINTS


async def test_a_port_change_says_restart_needed_and_keeps_the_old_listener(tmp_path):
    """server.port can't change live: status and the log say a restart is needed; the old port serves."""
    async with serve(tmp_path, port_config(8700)) as d:
        save_atomic(d.config_path, port_config(8799))
        shown = await wait_generation(d, 2)
        assert shown["restart_needed"] == ["server.port"]
        assert shown["last_reload"]["changes"]["needs_restart"] == ["server.port"], "the same words in both places"
        assert shown["server"]["port"] == 8700
        assert (await d.post("echo", "old listener")).json()["data"] == "old listener"
        warned = [e for e in d.log_events() if e["event"] == "restart needed to apply"]
        assert [e["keys"] for e in warned] == [["server.port"]]


async def test_restart_needed_stays_until_the_file_matches_the_listener_again(tmp_path):
    """A later unrelated edit still reports the pending port change; putting the port back clears it."""
    async with serve(tmp_path, port_config(8700)) as d:
        save_atomic(d.config_path, port_config(8799))
        await wait_generation(d, 2)
        save_in_place(d.config_path, port_config(8799) + "    concurrency: 2\n")
        assert (await wait_generation(d, 3))["restart_needed"] == ["server.port"]
        save_atomic(d.config_path, port_config(8700))
        assert (await wait_generation(d, 4))["restart_needed"] == []


async def test_kubernetes_style_symlink_swap_is_seen(tmp_path):
    """servd.yaml -> ..data/servd.yaml, and ..data is swapped to a new directory (a ConfigMap update)."""
    first = tmp_path / "..2024_01_01"
    first.mkdir()
    (tmp_path / "..data").symlink_to(first.name)
    (tmp_path / "servd.yaml").symlink_to("..data/servd.yaml")
    async with serve(tmp_path, ECHO) as d:  # written through the links, into ..2024_01_01
        second = tmp_path / "..2024_01_02"
        second.mkdir()
        (second / "servd.yaml").write_text(yaml_text(ECHO + "    concurrency: 3\n"))
        (tmp_path / "..data_tmp").symlink_to(second.name)
        os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
        shutil.rmtree(first)
        await wait_generation(d, 2)
        assert (await endpoints(d))["echo"]["concurrency"] == 3
