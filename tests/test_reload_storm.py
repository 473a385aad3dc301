"""No request is lost while servd.yaml is rewritten over and over under load (issue #4, DESIGN.md §7).

Several websocket clients keep a steady stream of requests going while the file goes through
limits changes, model swaps, an endpoint added and removed, invalid and unloadable versions, a
burst of saves too quick to reload one by one, and SIGHUPs in between. Afterwards every request
must have exactly one terminal message, last among its messages, and none may fail except by the
documented rule: the removed endpoint may refuse (unavailable, unknown_endpoint) a request that
was not sent while it was certainly being served. Everything it admitted must complete.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from tornado.websocket import WebSocketClientConnection, websocket_connect

from examples.versioned import Tagged
from tests.harness import Running, eventually, serve

CLIENTS = 4
LANES_PER_CLIENT = 3  # requests each client keeps in flight, each lane one after the other
WAIT_S = 15.0  # generous bound on any one wait: the machine may be loaded
PROGRESS_EACH_EDIT = 15  # requests that must complete between two edits (a steady stream, not a pause)
REMOVABLE = "extra"


@dataclass
class Version:
    """One state of the file: the knobs the storm turns."""

    tag: str
    concurrency: int = 2
    batch: int = 4
    extra: str | None = None  # the tag of the removable endpoint, when it is in the file
    extra_entrypoint: str = "examples.versioned:Tagged"

    def text(self) -> str:
        text = (
            "version: 1\n"
            "server: {drain_timeout_s: 10, max_threads: 16}\n"
            "endpoints:\n"
            "  work:\n"
            "    entrypoint: examples.versioned:Tagged\n"
            f"    options: {{tag: {self.tag}}}\n"
            f"    concurrency: {self.concurrency}\n"
            "    queue: {max_size: 100000, timeout_s: 120}\n"
            "  echo:\n"
            "    entrypoint: examples.echo:echo_batch\n"
            f"    batch: {{max_size: {self.batch}, max_delay_ms: 2}}\n"
        )
        if self.extra is not None:
            text += (
                f"  {REMOVABLE}:\n"
                f"    entrypoint: {self.extra_entrypoint}\n"
                f"    options: {{tag: {self.extra}}}\n"
                "    concurrency: 1\n"
            )
        return text


@dataclass
class Sent:
    id: str
    endpoint: str
    lane: int
    sent_at: float
    messages: list[dict[str, Any]] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def terminals(self) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["type"] in ("completed", "error")]

    @property
    def admitted(self) -> bool:
        return any(m["type"] == "queued" for m in self.messages)


class StormClient:
    """One websocket; its reader files each message under its request in O(1)."""

    def __init__(self, conn: WebSocketClientConnection, name: str) -> None:
        self.conn = conn
        self.name = name
        self.sent: dict[str, Sent] = {}
        self.strays: list[Any] = []
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        while True:
            text = await self.conn.read_message()
            if text is None:
                return
            message = json.loads(text)
            record = self.sent.get(message.get("id"))
            if record is None:
                self.strays.append(message)
                continue
            record.messages.append(message)
            if message["type"] in ("completed", "error"):
                record.done.set()

    async def request(self, endpoint: str, lane: int, data: Any) -> Sent:
        id = f"{self.name}-{len(self.sent)}"
        record = self.sent[id] = Sent(id, endpoint, lane, time.monotonic())
        await self.conn.write_message(json.dumps({"type": "submit", "id": id, "endpoint": endpoint, "data": data}))
        await asyncio.wait_for(record.done.wait(), WAIT_S)
        return record


@dataclass
class Storm:
    d: Running
    clients: list[StormClient] = field(default_factory=list)
    sending: bool = True
    completed: int = 0
    extra_served: list[tuple[float, float]] = field(default_factory=list)  # certainly-serving windows
    _extra_since: float | None = None

    async def lane(self, client: StormClient, lane: int) -> None:
        """Requests one after another, cycling through the endpoints, until told to stop."""
        endpoints = ("work", "echo", REMOVABLE)
        turn = lane
        while self.sending:
            endpoint = endpoints[turn % len(endpoints)]
            turn += 1
            data = {"s": 0.01, "n": turn} if endpoint != "echo" else {"n": turn}
            record = await client.request(endpoint, lane, data)
            if record.terminals()[0]["type"] == "completed":
                self.completed += 1

    async def steady(self) -> None:
        """Let the stream run until PROGRESS_EACH_EDIT more requests complete (bounded)."""
        target = self.completed + PROGRESS_EACH_EDIT
        await eventually(lambda: self.completed >= target, "requests to keep completing", timeout=WAIT_S)

    def save(self, version: Version) -> float:
        """Save the way editors do; returns the time just before the save, and closes an extra window."""
        if version.extra is None and self._extra_since is not None:
            self.extra_served.append((self._extra_since, time.monotonic()))
            self._extra_since = None
        since = time.time()
        path = self.d.config_path
        temp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        temp.write_text(version.text())
        os.replace(temp, path)
        return since

    async def applied(self, version: Version) -> None:
        """Wait until the daemon serves `version`'s endpoints and limits."""

        async def served() -> bool:
            status = (await self.d.http("GET", "/v1/status")).json()
            shown = {e["name"]: e for e in (await self.d.http("GET", "/v1/endpoints")).json()["endpoints"]}
            return (
                (REMOVABLE in status["endpoints"]) == (version.extra is not None)
                and shown["work"]["concurrency"] == version.concurrency
                and shown["echo"]["batch"]["max_size"] == version.batch
            )

        await eventually(served, f"the daemon to serve {version}", timeout=WAIT_S)
        if version.extra is not None and self._extra_since is None:
            self._extra_since = time.monotonic()

    async def reloaded(self, since: float, result: str) -> None:
        """Wait for a reload with `result` that ended after `since`."""

        async def seen() -> bool:
            last = (await self.d.http("GET", "/v1/status")).json()["last_reload"]
            return last is not None and last["at"] > since and last["result"] == result

        await eventually(seen, f"a reload with result {result}", timeout=WAIT_S)

    def extra_certainly_served(self, sent_at: float) -> bool:
        return any(start <= sent_at <= end for start, end in self.extra_served) or (
            self._extra_since is not None and sent_at >= self._extra_since
        )


async def edit_storm(storm: Storm, run: str) -> list[str]:
    """The sequence of edits; returns the tags `work` served, oldest first."""
    tags = [f"{run}-v{i}" for i in range(6)]

    async def apply(version: Version) -> None:
        storm.save(version)
        await storm.applied(version)
        await storm.steady()

    async def broken(text: str, result: str) -> None:
        since = time.time()
        path = storm.d.config_path
        temp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        temp.write_text(text)
        os.replace(temp, path)
        await storm.reloaded(since, result)
        await storm.steady()

    async def sighup() -> None:
        since = time.time()
        storm.d.daemon.request_reload()
        await storm.reloaded(since, "applied")
        await storm.steady()

    await storm.steady()
    await apply(Version(tags[0], concurrency=3))
    await apply(Version(tags[1], concurrency=3))  # model swap
    await apply(Version(tags[1], concurrency=3, extra=f"{run}-e1"))  # endpoint added
    await broken("version: 1\nendpoints:\n  work: [unclosed\n", "invalid")
    await apply(Version(tags[1], concurrency=3, batch=8, extra=f"{run}-e1"))
    await sighup()
    await apply(Version(tags[2], concurrency=1, batch=8))  # model swap + limits + endpoint removed
    await broken(Version(tags[2], concurrency=0).text(), "invalid")
    await apply(Version(tags[2], concurrency=1, batch=8, extra=f"{run}-e2"))  # endpoint back
    for concurrency in (2, 4, 3):  # a burst of saves, faster than reloads
        storm.save(Version(tags[2], concurrency=concurrency, batch=8, extra=f"{run}-e2"))
    await storm.applied(Version(tags[2], concurrency=3, batch=8, extra=f"{run}-e2"))
    await storm.steady()
    failing = Version(
        tags[3], concurrency=3, batch=8, extra=f"{run}-e2", extra_entrypoint="examples.faults:FailsToLoad"
    )
    await broken(failing.text(), "failed")
    await apply(Version(tags[3], concurrency=2, batch=2))  # endpoint removed again
    await sighup()
    await apply(Version(tags[4], concurrency=2, batch=2, extra=f"{run}-e3"))
    await broken("version: 1\nendpoints: {}\n", "invalid")
    await apply(Version(tags[5], concurrency=4, batch=4))
    return tags


async def test_no_request_is_lost_while_the_config_is_rewritten_under_load(tmp_path):
    """Every request gets exactly one terminal; only the removed endpoint refuses, and only when it may."""
    run = f"storm-{uuid.uuid4().hex[:6]}"
    async with serve(tmp_path, Version(f"{run}-v0").text(), expect_errors=True) as d:
        storm = Storm(d)
        for number in range(CLIENTS):
            conn = await websocket_connect(f"{d.ws_url}/v1/ws")
            storm.clients.append(StormClient(conn, f"c{number}"))
        lanes = [
            asyncio.ensure_future(storm.lane(client, client_lane + 10 * number))
            for number, client in enumerate(storm.clients)
            for client_lane in range(LANES_PER_CLIENT)
        ]
        try:
            tags = await edit_storm(storm, run)
        finally:
            storm.sending = False
            done, _ = await asyncio.wait(lanes, timeout=WAIT_S * 2)
        for lane in done:
            lane.result()  # a lane that raised (a request without a terminal in time) fails the test
        assert len(done) == len(lanes)

        records = [record for client in storm.clients for record in client.sent.values()]
        check_every_request_ended_once(records)
        check_outcomes(records, storm)
        check_models_only_move_forward(records, tags)
        assert [s for c in storm.clients for s in c.strays] == []
        assert storm.completed >= 10 * PROGRESS_EACH_EDIT
        for client in storm.clients:
            client.conn.close()
        retired = [*tags[:-1], *(f"{run}-e{i}" for i in (1, 2, 3))]
        await eventually(lambda: all_retired_models_closed(retired), "every retired model to be closed", timeout=WAIT_S)
        unexpected = [e for e in d.errors_logged() if e["event"] != "reload"]
        assert unexpected == []


def check_every_request_ended_once(records: list[Sent]) -> None:
    no_terminal = [r.id for r in records if not r.terminals()]
    several = [r.id for r in records if len(r.terminals()) > 1]
    after_terminal = [r.id for r in records if r.messages and r.messages[-1]["type"] not in ("completed", "error")]
    assert (no_terminal, several, after_terminal) == ([], [], []), f"of {len(records)} requests"


def check_outcomes(records: list[Sent], storm: Storm) -> None:
    failed = []
    for record in records:
        terminal = record.terminals()[0]
        if terminal["type"] == "completed":
            continue
        code = terminal["error"]["code"]
        refused_by_rule = (
            record.endpoint == REMOVABLE
            and not record.admitted
            and code in ("unavailable", "unknown_endpoint")
            and not storm.extra_certainly_served(record.sent_at)
        )
        if not refused_by_rule:
            failed.append((record.id, record.endpoint, record.admitted, terminal["error"]))
    assert failed == []
    served = [r for r in records if r.endpoint == REMOVABLE and r.terminals()[0]["type"] == "completed"]
    assert served, "the removable endpoint never served: the storm did not exercise it"


def check_models_only_move_forward(records: list[Sent], tags: list[str]) -> None:
    """Each lane asks one request at a time, so once it saw a new model it never sees an older one."""
    order = {tag: i for i, tag in enumerate(tags)}
    lanes: dict[tuple[str, int], list[int]] = {}
    for record in records:
        terminal = record.terminals()[0]
        if record.endpoint == "work" and terminal["type"] == "completed":
            lanes.setdefault((record.id.split("-")[0], record.lane), []).append(order[terminal["data"]["tag"]])
    for lane, seen in lanes.items():
        assert seen == sorted(seen), f"lane {lane} saw models {seen}"
    assert {tag for seen in lanes.values() for tag in seen} >= {0, len(tags) - 1}


def all_retired_models_closed(retired_tags: list[str]) -> bool:
    return all(Tagged.seen("closed", tag) == Tagged.seen("made", tag) >= 1 for tag in retired_tags)
