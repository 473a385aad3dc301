"""The systemd notify protocol, as systemd sees it: a real `servd run` and a real datagram socket.

The test binds an AF_UNIX datagram socket, passes its path as $NOTIFY_SOCKET (as systemd does
for Type=notify), and reads what arrives, with the sender's credentials (SO_PASSCRED) so it can
tell that each message comes from the main process, which NotifyAccess=main requires. The daemon
runs in its own process group and is killed at the end whatever happened; nothing waits a fixed
time.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from servd.daemon import systemd
from tests.procs import WAIT_S, Running, env, http, listening

CONFIG = """\
version: 1
server:
  drain_timeout_s: 30
endpoints:
  echo:
    entrypoint: examples.echo:echo
  classify:
    entrypoint: examples.digits:Classifier
    options: {hidden: 16}
"""

CREDENTIALS = struct.Struct("3i")  # struct ucred: pid, uid, gid


@dataclass
class Notification:
    lines: list[str]
    pid: int | None

    def get(self, key: str) -> str | None:
        values = [line.partition("=")[2] for line in self.lines if line.partition("=")[0] == key]
        return values[-1] if values else None

    def has(self, field: str) -> bool:
        return field in self.lines


class NotifySocket:
    """What systemd's end of $NOTIFY_SOCKET sees: every datagram, in order, with its sender's pid."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.received: list[Notification] = []

    def _receive_one(self) -> None:
        try:
            data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(CREDENTIALS.size))
        except TimeoutError:
            return
        pid = None
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = CREDENTIALS.unpack(payload[: CREDENTIALS.size])[0]
        self.received.append(Notification(data.decode().splitlines(), pid))

    def wait_for(
        self, predicate: Callable[[Notification], bool], what: str, after: int = 0, timeout: float = WAIT_S
    ) -> int:
        """Index of the first message from `after` on that satisfies `predicate`; bounded in time."""
        deadline = time.monotonic() + timeout
        seen = after
        while True:
            for index in range(seen, len(self.received)):
                if predicate(self.received[index]):
                    return index
            seen = max(seen, len(self.received))
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; received {self.received}")
            self._receive_one()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    """A datagram socket in tmp_path (or a short temp dir when tmp_path is too long for AF_UNIX)."""
    directory = tmp_path
    short = None
    if len(str(tmp_path / "notify")) > 100:
        short = tempfile.TemporaryDirectory(prefix="servd-sd-")
        directory = Path(short.name)
    sock = NotifySocket(directory / "notify")
    try:
        yield sock
    finally:
        sock.close()
        if short is not None:
            short.cleanup()


@contextmanager
def servd_run(tmp_path: Path, notify: NotifySocket, **extra_env: str) -> Iterator[Running]:
    """`servd run` with $NOTIFY_SOCKET set (and `extra_env`), once it listens (not yet ready); its
    process group is killed afterwards."""
    with listening(tmp_path, CONFIG, env=env() | {"NOTIFY_SOCKET": str(notify.path), **extra_env}) as daemon:
        yield daemon


def is_ready(n: Notification) -> bool:
    return n.has("READY=1")


def test_ready_is_sent_once_listening_with_every_model_loaded(tmp_path, notify_socket):
    """READY=1 arrives from the main pid when /readyz already answers 200; STATUS says what is served."""
    with servd_run(tmp_path, notify_socket) as daemon:
        index = notify_socket.wait_for(is_ready, "READY=1")
        assert http(daemon.port, "GET", "/readyz", timeout=10).status == 200
        ready = notify_socket.received[index]
        assert ready.pid == daemon.proc.pid
        assert ready.get("STATUS") == "serving: generation 1, 2 endpoints, 0 queued"
        assert not any(n.has("READY=1") for n in notify_socket.received[:index])


def test_sighup_sends_reloading_with_monotonic_usec_then_ready(tmp_path, notify_socket):
    """On SIGHUP: RELOADING=1 with MONOTONIC_USEC (the system's CLOCK_MONOTONIC, µs), later READY=1."""
    with servd_run(tmp_path, notify_socket) as daemon:
        first = notify_socket.wait_for(is_ready, "READY=1 at start")
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        daemon.proc.send_signal(signal.SIGHUP)
        index = notify_socket.wait_for(lambda n: n.has("RELOADING=1"), "RELOADING=1", after=first + 1)
        after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        reloading = notify_socket.received[index]
        assert reloading.pid == daemon.proc.pid
        usec = reloading.get("MONOTONIC_USEC")
        assert usec is not None and usec.isdigit()
        assert before <= int(usec) <= after
        done = notify_socket.wait_for(is_ready, "READY=1 after the reload", after=index + 1)
        generation = http(daemon.port, "GET", "/v1/status").body["generation"]
        assert notify_socket.received[done].get("STATUS") == f"serving: generation {generation}, 2 endpoints, 0 queued"


def test_watchdog_pings_repeat_while_watchdog_usec_is_set(tmp_path, notify_socket):
    """With WATCHDOG_USEC=200000, WATCHDOG=1 keeps arriving from the main pid after READY=1."""
    with servd_run(tmp_path, notify_socket, WATCHDOG_USEC="200000") as daemon:
        index = notify_socket.wait_for(is_ready, "READY=1")
        for _ in range(3):
            index = notify_socket.wait_for(lambda n: n.has("WATCHDOG=1"), "a WATCHDOG=1 ping", after=index + 1)
            assert notify_socket.received[index].pid == daemon.proc.pid


def test_no_watchdog_pings_without_watchdog_usec(tmp_path, notify_socket):
    """Without WATCHDOG_USEC, the daemon sends no WATCHDOG=1 (seen up to its STOPPING=1)."""
    with servd_run(tmp_path, notify_socket) as daemon:
        notify_socket.wait_for(is_ready, "READY=1")
        assert http(daemon.port, "POST", "/v1/endpoints/echo", {"data": 1}).status == 200
        daemon.proc.send_signal(signal.SIGTERM)
        notify_socket.wait_for(lambda n: n.has("STOPPING=1"), "STOPPING=1")
        assert not any(n.has("WATCHDOG=1") for n in notify_socket.received)


def test_sigterm_sends_stopping_then_exits_0(tmp_path, notify_socket):
    """On SIGTERM: STOPPING=1 (STATUS says it drains) from the main pid, then exit status 0."""
    with servd_run(tmp_path, notify_socket) as daemon:
        notify_socket.wait_for(is_ready, "READY=1")
        daemon.proc.send_signal(signal.SIGTERM)
        index = notify_socket.wait_for(lambda n: n.has("STOPPING=1"), "STOPPING=1")
        stopping = notify_socket.received[index]
        assert stopping.pid == daemon.proc.pid
        assert stopping.get("STATUS") == "stopping: draining 0 requests"
        assert daemon.proc.wait(WAIT_S) == 0


# -- servd.daemon.systemd in-process --------------------------------------------------------------


def test_notify_is_a_no_op_without_notify_socket(monkeypatch):
    """Not under systemd: notify() sends nothing and says so."""
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.notify("READY=1") is False


def test_notify_reaches_an_abstract_namespace_socket(monkeypatch):
    """An "@name" NOTIFY_SOCKET is the abstract socket "\\0name" (systemd uses these in containers)."""
    name = f"servd-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(WAIT_S)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert systemd.status("hello") is True
        assert sock.recv(4096) == b"STATUS=hello"


def test_notify_to_a_missing_socket_reports_failure_without_raising(monkeypatch, tmp_path):
    """A stale NOTIFY_SOCKET path must not crash the daemon."""
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    assert systemd.watchdog() is False


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        (None, None, None),
        ("200000", None, 0.1),
        ("30000000", "self", 15.0),
        ("30000000", "other", None),
        ("0", None, None),
        ("soon", None, None),
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec_for_this_process(monkeypatch, usec, pid, expected):
    """Half the timeout, as sd_watchdog_enabled(3) advises; None when unset, invalid, or for another pid."""
    for key, value in (("WATCHDOG_USEC", usec), ("WATCHDOG_PID", pid)):
        if value is None:
            monkeypatch.delenv(key, raising=False)
        else:
            monkeypatch.setenv(key, {"self": str(os.getpid()), "other": str(os.getpid() + 1)}.get(value, value))
    assert systemd.watchdog_interval_s() == expected


def test_serving_refreshes_the_status_in_the_words_of_ready(monkeypatch):
    """serving() sends only STATUS=, worded as READY's, so `systemctl status` reads the same."""
    name = f"servd-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(WAIT_S)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert systemd.serving("generation 2, 3 endpoints, 5 queued") is True
        assert sock.recv(4096) == b"STATUS=serving: generation 2, 3 endpoints, 5 queued"
