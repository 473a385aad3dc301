"""Scheduling beyond FIFO (issue 12), as a client sees it: priority levels, fair order, token
limits on priority, admission by predicted wait, deadline_s, batch.wait and what ops shows.

Every test runs the real daemon in-process (tests/harness.py). Calls that must stay "running"
wait on a gate (examples/versioned.py) that the test opens; the order requests ran in is read
from `examples.versioned:Numbered` (each result carries its call's number), never from timing.
Every admitted request must end exactly once, so each test counts terminal messages.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from typing import Any

import pytest

from examples import versioned
from servd.core.lines import LINE_UP_OVERDUE_S
from tests.harness import Running, WsClient, eventually, serve
from tests.test_reload_live import RELOAD_WAIT_S, save_atomic

# -- helpers --------------------------------------------------------------------------------


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def endpoint_shown(d: Running, name: str, token: str | None = None) -> dict[str, Any]:
    return (await d.http("GET", f"/v1/endpoints/{name}", headers=bearer(token) if token else None)).json()


async def wait_generation(d: Running, generation: int, token: str) -> None:
    async def serving() -> bool:
        status = (await d.http("GET", "/v1/status", headers=bearer(token))).json()
        return status["generation"] >= generation

    await eventually(serving, f"generation {generation}", timeout=RELOAD_WAIT_S)


async def metrics_text(d: Running) -> str:
    return (await d.http("GET", "/metrics")).body.decode()


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus text, by exact name and labels (in any order)."""
    for line in text.splitlines():
        match = re.fullmatch(r"(\w+)(?:\{(.*)\})? (\S+)", line)
        if match is None or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if found == labels:
            return float(match.group(3))
    return None


async def queued(ws: WsClient, id: Any) -> dict[str, Any]:
    return await ws.wait_for(lambda m: m.get("id") == id and m["type"] == "queued")


async def started(ws: WsClient, id: Any) -> None:
    await ws.wait_for(lambda m: m.get("id") == id and m["type"] == "started")


async def all_terminals(ws: WsClient, ids: list[Any], timeout: float = 60.0) -> dict[Any, dict[str, Any]]:
    """Wait for each request's terminal message; then check none got two."""
    ends = {id: await ws.terminal(id, timeout) for id in ids}
    assert_ended_once(ws, ids)
    return ends


def assert_ended_once(ws: WsClient, ids: list[Any]) -> None:
    counts = Counter(m.get("id") for m in ws.terminals())
    assert {id: counts[id] for id in ids if counts[id] != 1} == {}, "requests that did not end exactly once"


def order_of(ws: WsClient, id: Any, kind: str) -> int:
    return next(i for i, m in enumerate(ws.messages) if m.get("id") == id and m["type"] == kind)


# -- 1. priority levels -----------------------------------------------------------------------

PRIORITY_BATCHED = """
version: 1
endpoints:
  ranked:
    entrypoint: examples.versioned:NumberedBatch
    concurrency: 1
    batch: {max_size: 4, max_delay_ms: 50}
    queue: {priority_levels: 3}
"""


async def test_under_load_every_level_1_request_runs_before_level_2_and_level_2_before_3(tmp_path, gates):
    """With the one slot held by a running level-3 call, nine requests of levels 3, 2, 1 arriving
    interleaved run after it in level order (each level in arrival order), in batches of 4, 4 and 1
    where a batch may mix levels; the running call is not pre-empted: it completes first."""
    gate = gates()
    async with serve(tmp_path, PRIORITY_BATCHED) as d:
        ws = await d.ws()
        await ws.submit("blocker", "ranked", {"gate": gate}, priority=3)
        await started(ws, "blocker")
        submitted = [(f"p{level}-{i}", level) for i in range(3) for level in (3, 2, 1)]
        for id, level in submitted:
            await ws.submit(id, "ranked", {"level": level}, priority=level)
        await queued(ws, submitted[-1][0])
        shown = await endpoint_shown(d, "ranked")
        assert shown["stats"]["queued_by_priority"] == {"1": 3, "2": 3, "3": 3}

        versioned.open_gate(gate)
        ids = ["blocker"] + [id for id, _ in submitted]
        ends = await all_terminals(ws, ids)
        assert {m["type"] for m in ends.values()} == {"completed"}
        assert ends["blocker"]["data"]["call"] == 1
        ran = sorted(ids[1:], key=lambda id: (ends[id]["data"]["call"], order_of(ws, id, "completed")))
        levels_ran = [ends[id]["data"]["value"]["level"] for id in ran]
        assert levels_ran == [1, 1, 1, 2, 2, 2, 3, 3, 3], ran
        assert ran == sorted(ran, key=lambda id: (id[:2], int(id[3:])))  # each level in arrival order
        batches: dict[int, list[int]] = {}
        for id in ran:
            batches.setdefault(ends[id]["data"]["call"], []).append(ends[id]["data"]["value"]["level"])
        assert [len(b) for b in batches.values()] == [4, 4, 1]
        assert any(len(set(b)) > 1 for b in batches.values()), f"no batch mixed levels: {batches}"


# -- 2. fair order ----------------------------------------------------------------------------

FAIR = """
version: 1
server: {{tokens_file: tokens.txt}}
endpoints:
  shared:
    entrypoint: examples.versioned:Numbered
    concurrency: 1
    queue: {{order: {order}}}
"""


@pytest.mark.parametrize(
    ("order", "most_rank", "most_ran_before"),
    [("fair", 1, 1), ("fifo", 200, 200)],
)
async def test_a_polite_client_is_not_stuck_behind_a_flooding_one_under_fair_order(
    tmp_path, gates, order, most_rank, most_ran_before
):
    """order: fair: behind one client's 200 waiting requests another client's one request is admitted
    at rank 1 at most and runs after at most one of the flood (counted from the call numbers, not
    timed); under fifo, the contrast, it waits at rank 200 and runs after all 200."""
    (tmp_path / "tokens.txt").write_text("flood-token\npolite-token\n")
    gate = gates()
    async with serve(tmp_path, FAIR.format(order=order)) as d:
        flood = await d.ws(headers=bearer("flood-token"))
        polite = await d.ws(headers=bearer("polite-token"))
        await flood.submit("blocker", "shared", {"gate": gate})
        await started(flood, "blocker")
        for i in range(200):
            await flood.submit(i, "shared", i, progress=i == 199)
        await queued(flood, 199)
        await polite.submit("polite", "shared", "p")
        rank = (await queued(polite, "polite"))["rank"]

        versioned.open_gate(gate)
        done = await polite.terminal("polite", timeout=60)
        flood_ends = await all_terminals(flood, ["blocker", *range(200)])
        assert_ended_once(polite, ["polite"])
        assert done["type"] == "completed"
        assert {m["type"] for m in flood_ends.values()} == {"completed"}
        calls = [flood_ends[i]["data"]["call"] for i in range(200)]
        assert calls == sorted(calls), "the flooding client's own requests ran out of order"
        ran_before = done["data"]["call"] - 2  # call 1 was the blocker
        if order == "fair":
            assert rank <= most_rank
            assert ran_before <= most_ran_before
        else:
            assert (rank, ran_before) == (most_rank, most_ran_before)


# -- 3. token limits on priority --------------------------------------------------------------

TOKEN_LIMITS = """
version: 1
server: {tokens_file: tokens.txt}
endpoints:
  high_default:
    entrypoint: examples.versioned:gated
    concurrency: 1
    queue: {priority_levels: 3, default_priority: 1}
  low_default:
    entrypoint: examples.versioned:gated
    concurrency: 1
    queue: {priority_levels: 3}
"""
TOKENS = "# limited to level 2 and below\nlimited-token priority=2\nplain-token\n"


async def test_a_token_limited_to_level_2_is_refused_level_1_and_defaults_to_no_higher_than_2(tmp_path, gates):
    """A token written `priority=2` asking for level 1 gets bad_request naming its limit (websocket,
    with the request's id, and HTTP 400); asking for nothing it waits at max(default, 2): level 2
    where the default is 1, level 3 where it is 3; levels 2 and 3 it may ask for. A plain token line
    (the old format) may ask for any level."""
    (tmp_path / "tokens.txt").write_text(TOKENS)
    gate = gates()
    async with serve(tmp_path, TOKEN_LIMITS) as d:
        plain = await d.ws(headers=bearer("plain-token"))
        limited = await d.ws(headers=bearer("limited-token"))
        for name in ("high_default", "low_default"):
            await plain.submit(f"blocker-{name}", name, {"gate": gate}, priority=1)
            await started(plain, f"blocker-{name}")

        await limited.submit("too-high", "high_default", 1, priority=1)
        refused = await limited.terminal("too-high")
        assert refused["error"]["code"] == "bad_request"
        assert "highest level is 2" in refused["error"]["message"]
        reply = await d.http(
            "POST", "/v1/endpoints/high_default", {"data": 1, "priority": 1}, headers=bearer("limited-token")
        )
        assert reply.status == 400
        assert reply.json()["error"]["code"] == "bad_request"
        assert "highest level is 2" in reply.json()["error"]["message"]

        admitted = {"limited-default-high": ("high_default", None), "limited-default-low": ("low_default", None)}
        admitted |= {"limited-2": ("high_default", 2), "limited-3": ("high_default", 3)}
        admitted |= {"plain-1": ("low_default", 1), "plain-default": ("low_default", None)}
        for id, (name, priority) in admitted.items():
            client = plain if id.startswith("plain") else limited
            extra = {} if priority is None else {"priority": priority}
            await client.submit(id, name, id, **extra)
            await queued(client, id)
        high, low = [await endpoint_shown(d, name, "plain-token") for name in ("high_default", "low_default")]
        assert high["stats"]["queued_by_priority"] == {"1": 0, "2": 2, "3": 1}
        assert low["stats"]["queued_by_priority"] == {"1": 1, "2": 0, "3": 2}

        versioned.open_gate(gate)
        await all_terminals(limited, ["limited-default-high", "limited-default-low", "limited-2", "limited-3"])
        await all_terminals(plain, ["blocker-high_default", "blocker-low_default", "plain-1", "plain-default"])
        assert_ended_once(limited, ["too-high"])
        assert {m["type"] for m in plain.terminals() + limited.terminals() if m["id"] != "too-high"} == {"completed"}


# -- 4. bad values ----------------------------------------------------------------------------

LEVELS_3 = """
version: 1
endpoints:
  echo:
    entrypoint: examples.echo:echo
    queue: {priority_levels: 3}
"""
BAD_VALUES = [
    ("priority", 4, "queue.priority_levels=3"),
    ("priority", -1, "'priority'"),
    ("priority", 1.5, "'priority'"),
    ("priority", 1.0, "'priority'"),
    ("priority", "1", "'priority'"),
    ("priority", True, "'priority'"),
    ("deadline_s", 0, "'deadline_s'"),
    ("deadline_s", -2.5, "'deadline_s'"),
    ("deadline_s", "5", "'deadline_s'"),
    ("deadline_s", True, "'deadline_s'"),
]


async def test_bad_priority_or_deadline_is_bad_request_with_the_id_on_the_websocket(tmp_path):
    """A priority beyond queue.priority_levels, negative, not an integer or a boolean, and a deadline_s
    of 0 or less, a string or a boolean, each get one bad_request error carrying the request's id and
    naming the field; nothing is admitted, and the socket goes on serving."""
    async with serve(tmp_path, LEVELS_3) as d:
        ws = await d.ws()
        ids = [f"bad-{i}" for i in range(len(BAD_VALUES))]
        for id, (field, value, _) in zip(ids, BAD_VALUES, strict=True):
            await ws.submit(id, "echo", 1, **{field: value})
        ends = await all_terminals(ws, ids)
        for id, (field, value, named) in zip(ids, BAD_VALUES, strict=True):
            assert ends[id]["type"] == "error", (field, value)
            assert ends[id]["error"]["code"] == "bad_request", (field, value)
            assert named in ends[id]["error"]["message"], (field, value, ends[id])
        assert not [m for m in ws.messages if m["type"] == "queued"]
        await ws.submit("fine", "echo", 1, priority=3, deadline_s=5)
        assert (await ws.terminal("fine"))["type"] == "completed"
        assert (await endpoint_shown(d, "echo"))["stats"]["completed"] == 1


async def test_bad_priority_or_deadline_is_400_over_http(tmp_path):
    """The same bad priority and deadline_s values in an HTTP body get 400 bad_request naming the
    field, and nothing is admitted."""
    async with serve(tmp_path, LEVELS_3) as d:
        for field, value, named in BAD_VALUES:
            reply = await d.http("POST", "/v1/endpoints/echo", {"data": 1, field: value})
            assert reply.status == 400, (field, value)
            assert reply.json()["error"]["code"] == "bad_request"
            assert named in reply.json()["error"]["message"], (field, value)
        ok = await d.http("POST", "/v1/endpoints/echo", {"data": 7, "priority": 0, "deadline_s": 5})
        assert ok.status == 200 and ok.json()["data"] == 7
        shown = await endpoint_shown(d, "echo")
        assert shown["stats"]["completed"] == 1 and shown["stats"]["failed"] == 0


# -- 5. admission by predicted wait, and deadline_s ------------------------------------------

NAP_S = 0.5
TIMEOUT_S = 2.25  # 4.5 naps: requests 0-3 of a burst can finish in time, 4 onwards can't


def predicted(admit: str, timeout_s: float = TIMEOUT_S) -> str:
    return f"""
    version: 1
    endpoints:
      nap:
        entrypoint: examples.faults:sleep
        concurrency: 1
        queue: {{admit: {admit}, timeout_s: {timeout_s}}}
    """


async def warm(ws: WsClient, endpoint: str = "nap", calls: int = 2) -> None:
    """Run calls one by one so the endpoint has measured its batch time (the ETA needs it)."""
    for i in range(calls):
        await ws.submit(f"warm-{i}", endpoint, {"s": NAP_S}, progress=False)
        assert (await ws.terminal(f"warm-{i}"))["type"] == "completed"


async def burst(ws: WsClient, count: int = 8) -> tuple[list[int], dict[Any, dict[str, Any]]]:
    """After warming up, `count` one-nap requests sent at once: their ids and terminal messages."""
    await warm(ws)
    ids = list(range(count))
    for id in ids:
        await ws.submit(id, "nap", {"s": NAP_S})
    return ids, await all_terminals(ws, ids)


async def test_predicted_admission_refuses_at_once_what_cannot_finish_before_timeout_s(tmp_path):
    """queue.admit: predicted, timeout_s 4.5 naps, a burst of 8 one-nap requests: the first few are
    admitted and all complete (none times out), the rest are refused with queue_full at once, before
    the first of the burst has finished."""
    async with serve(tmp_path, predicted("predicted")) as d:
        ws = await d.ws()
        ids, ends = await burst(ws)
        admitted = [id for id in ids if ws.of(id)[0]["type"] == "queued"]
        refused = [id for id in ids if id not in admitted]
        assert admitted == ids[: len(admitted)], "admission is not a prefix of the burst"
        assert 2 <= len(admitted) <= 5, admitted
        assert [ends[id]["type"] for id in admitted] == ["completed"] * len(admitted)
        for id in refused:
            assert ends[id]["error"]["code"] == "queue_full"
            assert "queue.admit=predicted" in ends[id]["error"]["message"]
            assert order_of(ws, id, "error") < order_of(ws, 0, "completed"), "refused only after waiting"


async def test_with_admit_always_everything_is_admitted_and_the_late_ones_time_out(tmp_path):
    """The contrast: queue.admit: always admits the whole burst, and those that can't finish within
    timeout_s end with timeout naming queue.timeout_s; each request ends exactly once."""
    async with serve(tmp_path, predicted("always")) as d:
        ws = await d.ws()
        ids, ends = await burst(ws)
        assert all(ws.of(id)[0]["type"] == "queued" for id in ids)
        timed_out = [id for id in ids if ends[id]["type"] == "error"]
        assert timed_out, "nothing timed out: the burst was not long enough to show the contrast"
        for id in timed_out:
            assert ends[id]["error"]["code"] == "timeout"
            assert f"queue.timeout_s={TIMEOUT_S}" in ends[id]["error"]["message"]


async def test_a_tighter_deadline_s_is_refused_at_admission_over_websocket_and_http(tmp_path):
    """With queue.timeout_s 60 and a measured one-nap call, a request whose own deadline_s (0.3 s) is
    shorter than one call is refused with queue_full at once (HTTP: 503 with Retry-After), while one
    with a deadline_s it can meet is admitted and completes."""
    async with serve(tmp_path, predicted("predicted", 60)) as d:
        ws = await d.ws()
        await warm(ws)
        await ws.submit("hurried", "nap", {"s": NAP_S}, deadline_s=0.3)
        refused = await ws.terminal("hurried")
        assert refused["error"]["code"] == "queue_full"
        assert [m["type"] for m in ws.of("hurried")] == ["error"]
        reply = await d.http("POST", "/v1/endpoints/nap", {"data": {"s": NAP_S}, "deadline_s": 0.3})
        assert reply.status == 503
        assert reply.json()["error"]["code"] == "queue_full"
        assert int(reply.headers["Retry-After"]) >= 1
        await ws.submit("patient", "nap", {"s": NAP_S}, deadline_s=20)
        assert (await ws.terminal("patient"))["type"] == "completed"
        assert_ended_once(ws, ["hurried", "patient"])


async def test_deadline_s_is_the_request_timeout_when_tighter_than_timeout_s(tmp_path):
    """A request whose deadline_s (0.3 s) is tighter than queue.timeout_s (60) ends with timeout at
    its own deadline, and the message names deadline_s, not queue.timeout_s."""
    async with serve(tmp_path, predicted("always", 60)) as d:
        ws = await d.ws()
        await ws.submit("hurried", "nap", {"s": 2 * NAP_S}, deadline_s=0.3)
        end = await ws.terminal("hurried")
        assert end["error"]["code"] == "timeout"
        assert "deadline_s=0.3" in end["error"]["message"]
        assert "queue.timeout_s" not in end["error"]["message"]
        assert_ended_once(ws, ["hurried"])


async def test_predicted_admission_admits_while_no_batch_time_is_measured(tmp_path):
    """A fresh endpoint under queue.admit: predicted has no batch time to predict from, so it admits
    even a request that can't meet its deadline_s; that one then times out, naming deadline_s."""
    async with serve(tmp_path, predicted("predicted", 60)) as d:
        ws = await d.ws()
        await ws.submit("first", "nap", {"s": 2 * NAP_S}, deadline_s=0.3)
        end = await ws.terminal("first")
        assert ws.of("first")[0]["type"] == "queued"
        assert ws.of("first")[0]["eta_s"] is None
        assert end["error"]["code"] == "timeout"
        assert "deadline_s=0.3" in end["error"]["message"]


# -- 6. estimation on demotion ----------------------------------------------------------------

TWO_LEVELS = """
version: 1
endpoints:
  gated:
    entrypoint: examples.versioned:Numbered
    concurrency: 1
    queue: {priority_levels: 2}
"""


async def test_a_waiting_request_is_told_its_new_rank_when_a_higher_priority_one_arrives(tmp_path, gates):
    """A level-2 request waiting at rank 0 gets an estimation with rank 1 once a level-1 request
    arrives (which is queued at rank 0 and runs first)."""
    gate = gates()
    async with serve(tmp_path, TWO_LEVELS) as d:
        ws = await d.ws()
        await ws.submit("blocker", "gated", {"gate": gate}, priority=1)
        await started(ws, "blocker")
        await ws.submit("low", "gated", "low", priority=2)
        assert (await queued(ws, "low"))["rank"] == 0
        await ws.submit("high", "gated", "high", priority=1)
        assert (await queued(ws, "high"))["rank"] == 0
        demoted = await ws.wait_for(lambda m: m.get("id") == "low" and m["type"] == "estimation")
        assert demoted["rank"] == 1
        assert demoted["queue_size"] == 2

        versioned.open_gate(gate)
        ends = await all_terminals(ws, ["blocker", "low", "high"])
        assert ends["high"]["data"]["call"] < ends["low"]["data"]["call"]


# -- 7. reload that re-sorts ------------------------------------------------------------------

RESORT = """
version: 1
server: {{tokens_file: tokens.txt}}
endpoints:
  gated:
    entrypoint: examples.versioned:Numbered
    concurrency: 1
    queue: {{priority_levels: {levels}, order: {order}}}
"""


async def test_a_reload_from_fifo_to_fair_with_fewer_levels_loses_none_of_500_waiting(tmp_path, gates):
    """500 requests of two clients wait (levels 1-3, fifo) behind a gated call; the config is saved with
    order: fair and 2 levels. Once the gate opens, every one of the 500 ends exactly once, completed
    (none refused, lost or run twice); level 1 still runs first, now alternating between the clients,
    and the old level 3 joins level 2."""
    (tmp_path / "tokens.txt").write_text("a-token\nb-token\n")
    gate = gates()
    async with serve(tmp_path, RESORT.format(levels=3, order="fifo")) as d:
        a = await d.ws(headers=bearer("a-token"))
        b = await d.ws(headers=bearer("b-token"))
        await a.submit("blocker", "gated", {"gate": gate})
        await started(a, "blocker")
        asked = {}
        for client, count in ((a, 400), (b, 100)):
            for i in range(count):
                level = 1 + i % 3
                asked[client, i] = level
                await client.submit(i, "gated", i, priority=level, progress=i == count - 1)
            await queued(client, count - 1)
        assert (await endpoint_shown(d, "gated", "a-token"))["stats"]["queued"] == 500

        save_atomic(d.config_path, RESORT.format(levels=2, order="fair"))
        await wait_generation(d, 2, "a-token")
        shown = await endpoint_shown(d, "gated", "a-token")
        assert shown["queue"]["order"] == "fair" and shown["queue"]["priority_levels"] == 2
        assert shown["stats"]["queued_by_priority"] == {"1": 134 + 34, "2": 500 - 134 - 34}

        versioned.open_gate(gate)
        ends_a = await all_terminals(a, ["blocker", *range(400)], timeout=120)
        ends_b = await all_terminals(b, list(range(100)), timeout=120)
        ends = {(a, i): ends_a[i] for i in range(400)} | {(b, i): ends_b[i] for i in range(100)}
        assert {m["type"] for m in ends.values()} == {"completed"}
        calls = sorted(m["data"]["call"] for m in ends.values())
        assert calls == list(range(2, 502)), "a request was lost or run twice"
        ran = sorted(ends, key=lambda key: ends[key]["data"]["call"])
        levels = [min(asked[key], 2) for key in ran]
        assert levels == sorted(levels), "a level-2 request ran before a level-1 one"
        first_level = ["a" if client is a else "b" for client, _ in ran[: levels.count(1)]]
        assert first_level[:68] == ["a", "b"] * 34, "level 1 is not round-robin between the clients"


# -- 8. batch.wait ----------------------------------------------------------------------------


def long_delay(wait: str, max_delay_ms: int) -> str:
    return f"""
    version: 1
    endpoints:
      batched:
        entrypoint: examples.versioned:NumberedBatch
        concurrency: 1
        batch: {{max_size: 4, max_delay_ms: {max_delay_ms}, wait: {wait}}}
    """


async def test_a_lone_request_on_an_idle_batched_endpoint_runs_at_once_by_default(tmp_path):
    """batch.wait: when_busy (the default) with max_delay_ms 5000: a request that finds the endpoint
    idle starts at once (queue_s well under 5 s), in a batch of its own."""
    async with serve(tmp_path, long_delay("when_busy", 5000)) as d:
        ws = await d.ws()
        await ws.submit("lone", "batched", 1)
        done = await ws.terminal("lone", timeout=30)
        assert done["type"] == "completed"
        assert done["timing"]["queue_s"] < 2.0, done
        assert done["timing"]["batch_size"] == 1
        assert (await endpoint_shown(d, "batched"))["batch"]["wait"] == "when_busy"


async def test_under_load_requests_still_gather_into_batches_with_wait_when_busy(tmp_path, gates):
    """batch.wait: when_busy: while a call runs, requests that arrive wait and then run together
    (batch_size > 1), not one call each."""
    gate = gates()
    async with serve(tmp_path, long_delay("when_busy", 5000)) as d:
        ws = await d.ws()
        await ws.submit("blocker", "batched", {"gate": gate})
        await started(ws, "blocker")
        ids = [f"r{i}" for i in range(5)]
        for id in ids:
            await ws.submit(id, "batched", id)
        await queued(ws, ids[-1])
        versioned.open_gate(gate)
        ends = await all_terminals(ws, ["blocker", *ids])
        assert {m["type"] for m in ends.values()} == {"completed"}
        sizes = [ends[id]["timing"]["batch_size"] for id in ids]
        assert max(sizes) > 1, sizes
        assert len({ends[id]["data"]["call"] for id in ids}) < len(ids)


async def test_with_wait_always_a_lone_request_waits_max_delay_for_company(tmp_path):
    """batch.wait: always: a lone request on an idle endpoint is held about max_delay_ms (1.5 s) for a
    fuller batch before it runs."""
    async with serve(tmp_path, long_delay("always", 1500)) as d:
        ws = await d.ws()
        await ws.submit("lone", "batched", 1)
        done = await ws.terminal("lone", timeout=30)
        assert done["type"] == "completed"
        assert done["timing"]["queue_s"] >= 1.4, done
        assert done["timing"]["batch_size"] == 1


# -- 9. what ops shows ------------------------------------------------------------------------

SHOWN = """
version: 1
endpoints:
  ranked:
    entrypoint: examples.versioned:Numbered
    concurrency: 1
    queue: {priority_levels: 3, default_priority: 2, order: fair, admit: predicted, timeout_s: 30}
  batched:
    entrypoint: examples.versioned:NumberedBatch
    batch: {max_size: 8, max_delay_ms: 20, wait: always}
"""


async def test_endpoints_and_metrics_show_the_queue_settings_depth_by_level_and_eta_error(tmp_path, gates):
    """/v1/endpoints shows each queue's priority_levels, default_priority, order and admit, the batch's
    wait, stats.queued_by_priority (counted per level while requests wait) and stats.eta_error_s once
    a request given an ETA has completed; /metrics counts servd_admitted_total by priority (an HTTP
    body's priority included) and has the servd_eta_error_seconds histogram."""
    gate = gates()
    async with serve(tmp_path, SHOWN) as d:
        shown = await endpoint_shown(d, "ranked")
        assert shown["queue"] == {
            "max_size": None,
            "timeout_s": 30,
            "max_per_client": None,
            "priority_levels": 3,
            "default_priority": 2,
            "order": "fair",
            "admit": "predicted",
        }
        assert shown["stats"]["queued_by_priority"] == {"1": 0, "2": 0, "3": 0}
        assert shown["stats"]["eta_error_s"] == {"p50": None, "p99": None}
        assert (await endpoint_shown(d, "batched"))["batch"] == {"max_size": 8, "max_delay_ms": 20, "wait": "always"}

        ws = await d.ws()
        for id in ("warm-0", "warm-1"):  # the second is given an ETA: the first measured a call
            await ws.submit(id, "ranked", id)
            assert (await ws.terminal(id))["type"] == "completed"
        assert ws.of("warm-1")[0]["eta_s"] is not None
        reply = await d.http("POST", "/v1/endpoints/ranked", {"data": "over-http", "priority": 1, "deadline_s": 20})
        assert reply.status == 200 and reply.json()["data"]["data"] == "over-http"

        await ws.submit("blocker", "ranked", {"gate": gate}, priority=1)
        await started(ws, "blocker")
        # Requests arriving within LINE_UP_OVERDUE_S of a short call's start may be lined up behind it
        # (core.lines) instead of waiting in the queue; these are to wait, so they come once it is overdue.
        await asyncio.sleep(LINE_UP_OVERDUE_S * 4)
        for id, priority in (("one", 1), ("default", 0), ("three", 3), ("three-again", 3)):
            await ws.submit(id, "ranked", id, priority=priority)
            await queued(ws, id)
        stats = (await endpoint_shown(d, "ranked"))["stats"]
        assert stats["queued_by_priority"] == {"1": 1, "2": 1, "3": 2}
        assert isinstance(stats["eta_error_s"]["p50"], float) and stats["eta_error_s"]["p50"] >= 0

        versioned.open_gate(gate)
        await all_terminals(ws, ["warm-0", "warm-1", "blocker", "one", "default", "three", "three-again"])
        text = await metrics_text(d)
        assert sample(text, "servd_eta_error_seconds_count", endpoint="ranked") >= 1
        assert sample(text, "servd_admitted_total", endpoint="ranked", priority="1") == 3  # over-http too
        assert sample(text, "servd_admitted_total", endpoint="ranked", priority="2") == 3  # warm-ups + default
        assert sample(text, "servd_admitted_total", endpoint="ranked", priority="3") == 2
