"""A reload never fails silently: an unexpected exception at any step is recorded, counted and
logged, READY=1 follows, and the daemon keeps serving (#11).

Each test injects a RuntimeError (a bug of servd's or a library's, not a bad file) at one step of
the reload: loading the file (on the worker thread), planning, loading new models, or applying a
change. The file's own problems (invalid, failed loads) are tested in test_reload_live.py.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import Running, eventually, serve

CONFIG = """
version: 1
server: {max_threads: 8}
endpoints:
  echo: {entrypoint: examples.echo:echo}
  other: {entrypoint: examples.echo:echo}
"""
EDITED = CONFIG.replace("max_threads: 8", "max_threads: 6") + "  added: {entrypoint: examples.echo:echo}\n"
INJECTED = "injected fault"


def boom(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError(INJECTED)


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """systemd's end of $NOTIFY_SOCKET: what the daemon reports, datagram by datagram."""
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.setblocking(False)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        yield sock


def notifications(sock: socket.socket) -> list[str]:
    received = []
    while True:
        try:
            received.append(sock.recv(4096).decode())
        except BlockingIOError:
            return received


async def reload_and_wait(d: Running, edit: str | None = EDITED) -> dict[str, Any]:
    """Save `edit` (the file watcher reloads it) or, with None, SIGHUP; returns the record of a
    reload that ended after this call began (never an earlier one still shown)."""
    before = time.time()
    if edit is not None:
        d.config_path.write_text(edit.lstrip())
    else:
        d.daemon.request_reload()

    async def last() -> Any:
        record = (await d.http("GET", "/v1/status")).json()["last_reload"]
        return record if record is not None and record["at"] > before else None

    return await eventually(last, "a reload that ended after the edit")


async def still_serves(d: Running) -> None:
    reply = await d.post("echo", {"after": "the reload"})
    assert reply.status == 200 and reply.json()["data"] == {"after": "the reload"}


def failed_reloads_counted(text: str) -> float:
    match = re.search(r'^servd_reloads_total\{result="failed"\} (\S+)$', text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def assert_recorded_failed(d: Running, record: dict[str, Any], sock: socket.socket) -> None:
    assert record["result"] == "failed"
    assert INJECTED in record["error"]
    assert failed_reloads_counted((await d.http("GET", "/metrics")).body.decode()) == 1
    sent = notifications(sock)
    assert [m.split("\n")[0] for m in sent[-2:]] == ["RELOADING=1", "READY=1"], "systemd must not be left in RELOADING"
    assert [e for e in d.errors_logged() if e["event"] in ("reload", "reload step failed")], "the failure is logged"
    await still_serves(d)


@pytest.mark.parametrize(
    "target",
    [
        "servd.daemon.reloader.load_checked",  # loading the file, on the worker thread
        "servd.daemon.reloader.plan",  # diffing old and new
        "servd.daemon.reloader.Reloader._load_changed_models",  # building the new models
    ],
)
async def test_a_fault_before_anything_is_switched_changes_nothing(tmp_path, notify_socket, monkeypatch, target):
    async with serve(tmp_path, CONFIG, expect_errors=True) as d:
        monkeypatch.setattr(target, boom)
        record = await reload_and_wait(d)
        await assert_recorded_failed(d, record, notify_socket)
        status = (await d.http("GET", "/v1/status")).json()
        assert status["generation"] == 1 and status["endpoints"] == ["echo", "other"]
        assert status["server"]["max_threads"] == 8


async def test_a_fault_in_one_apply_step_still_applies_the_others(tmp_path, notify_socket, monkeypatch):
    """The pool resize breaks: the new endpoint is still added, and max_threads keeps its old value."""
    async with serve(tmp_path, CONFIG, expect_errors=True) as d:
        monkeypatch.setattr(d.daemon.runner, "resize", boom)
        record = await reload_and_wait(d)
        await assert_recorded_failed(d, record, notify_socket)
        assert "apply server.max_threads" in record["error"]
        status = (await d.http("GET", "/v1/status")).json()
        assert status["endpoints"] == ["added", "echo", "other"]
        assert status["server"]["max_threads"] == 8, "what failed to apply is not shown as applied"
        assert (await d.post("added", 3)).json()["data"] == 3


async def test_a_step_that_failed_is_tried_again_by_the_next_reload(tmp_path, notify_socket, monkeypatch):
    """An endpoint whose retune broke keeps its old spec, so the same file applies it next time."""
    async with serve(tmp_path, CONFIG, expect_errors=True) as d:
        retuned = CONFIG.replace(
            "  other: {entrypoint: examples.echo:echo}", "  other: {entrypoint: examples.echo:echo, concurrency: 3}"
        )
        monkeypatch.setattr(d.daemon.endpoints["other"], "retune", boom)
        record = await reload_and_wait(d, retuned)
        await assert_recorded_failed(d, record, notify_socket)
        assert "retune endpoint 'other'" in record["error"]
        monkeypatch.undo()
        record = await reload_and_wait(d, None)  # SIGHUP, same file
        assert record["result"] == "applied" and record["changes"]["retuned"] == ["other"]
        shown = (await d.http("GET", "/v1/endpoints/other")).json()
        assert shown["concurrency"] == 3
