"""What the benchmarks share: pinned server subprocesses, a fast closed-loop websocket client, tables.

The load generator is one asyncio process with a minimal websocket client written on
asyncio.Protocol (unmasked-by-zero-key client frames, no per-message coroutine), so that on a
small machine the client is not the bottleneck it would be with a general-purpose client.
Every server is a subprocess in its own process group, pinned with taskset, and is always
killed in a `finally`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
HOST = "127.0.0.1"
SERVER_CORE = 0
CLIENT_CORE = 1
CONNECT_CHUNK = 32  # connections opened at once (stays under the listen backlog)
DRAIN_TIMEOUT_S = 10.0  # after a measurement, wait this long at most for replies still in flight


# -- machine ---------------------------------------------------------------------------------


def _usable_cores() -> list[int]:
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


_CORES = _usable_cores()  # read once, before this process pins itself to one of them


def cores() -> list[int]:
    return list(_CORES)


def can_pin() -> bool:
    return (
        shutil.which("taskset") is not None
        and hasattr(os, "sched_setaffinity")
        and {SERVER_CORE, CLIENT_CORE} <= set(_CORES)
    )


def pin_prefix(core: int) -> list[str]:
    """`taskset -c CORE` when pinning is possible, else nothing."""
    return ["taskset", "-c", str(core)] if can_pin() else []


def pin_self(core: int) -> bool:
    if not can_pin():
        return False
    os.sched_setaffinity(0, {core})
    return True


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_info() -> dict[str, Any]:
    pinned = can_pin()
    return {
        "cpu": cpu_model(),
        "cores": len(cores()),
        "pinning": f"servers on core {SERVER_CORE} (taskset), load generator on core {CLIENT_CORE} (sched_setaffinity)"
        if pinned
        else "none (taskset or a second core missing)",
        "python": platform.python_version(),
        "tornado": _version("tornado"),
        "torch": _version("torch"),
        "servd_root": str(ROOT),
        "loadavg_at_start": loadavg(),
    }


def print_machine(info: dict[str, Any]) -> None:
    print(f"cpu: {info['cpu']} ({info['cores']} cores); pinning: {info['pinning']}")
    print(f"python {info['python']}, tornado {info['tornado']}, torch {info['torch']}; servd from {info['servd_root']}")
    print(f"load average at start: {info['loadavg_at_start']} (other work on the machine makes numbers noisy)")


# -- server subprocesses ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads), from /proc; 0 where unreadable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def context_switches(pid: int) -> int:
    """Voluntary + involuntary context switches of all of a process's threads, from /proc."""
    total = 0
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                for line in (task / "status").read_text().splitlines():
                    if "ctxt_switches:" in line:
                        total += int(line.split(":")[1])
    return total


def core_times() -> dict[int, list[int]]:
    """Per-core jiffies from /proc/stat: user nice system idle iowait irq softirq steal ..."""
    times: dict[int, list[int]] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/stat").read_text().splitlines():
            name, *values = line.split()
            if name.startswith("cpu") and name[3:].isdigit():
                times[int(name[3:])] = [int(v) for v in values[:8]]
    return times


def core_shares(before: dict[int, list[int]], after: dict[int, list[int]]) -> dict[str, dict[str, float]]:
    """Per core, over the window: share busy (ours and everyone's), idle and stolen by the hypervisor."""
    shares = {}
    for core, end in after.items():
        start = before.get(core)
        if start is None:
            continue
        d = [b - a for a, b in zip(start, end, strict=True)]
        total = sum(d) or 1
        shares[str(core)] = {
            "busy": round((d[0] + d[1] + d[2] + d[5] + d[6]) / total, 3),
            "idle": round((d[3] + d[4]) / total, 3),
            "steal": round(d[7] / total, 3),
        }
    return shares


@dataclass
class Server:
    """A server subprocess in its own process group, pinned to SERVER_CORE."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def cpu_s(self) -> float:
        return process_cpu_s(self.pid)

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)


@contextlib.contextmanager
def servers() -> Iterator[list[Server]]:
    """A list to start servers into; every one is stopped on the way out, whatever happened."""
    started: list[Server] = []
    try:
        yield started
    finally:
        for server in reversed(started):
            server.stop()


def start_server(
    name: str,
    argv: Sequence[str],
    port: int,
    ready_path: str,
    log_path: Path | None = None,
    timeout_s: float = 60,
    root: Path = ROOT,
) -> Server:
    """Start `argv` pinned to SERVER_CORE (cwd = `root`, first on sys.path); wait until GET ready_path is 200."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(root), *filter(None, [env.get("PYTHONPATH")])])
    env.pop("PYTHONDEVMODE", None)
    out = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115 - closed below
    try:
        process = subprocess.Popen(
            [*pin_prefix(SERVER_CORE), *argv],
            cwd=root,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    finally:
        if log_path:
            out.close()  # type: ignore[union-attr]
    server = Server(name, port, process, log_path)
    try:
        _wait_ready(server, ready_path, timeout_s)
    except BaseException:
        server.stop()
        raise
    return server


def _wait_ready(server: Server, path: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    url = f"http://{HOST}:{server.port}{path}"
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            tail = server.log_path.read_text()[-2000:] if server.log_path else ""
            raise RuntimeError(f"{server.name} exited with {server.process.returncode} before it was ready\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{server.name} not ready at {url} after {timeout_s}s")


def servd_config(endpoints_yaml: str, *, log_level: str = "warning", torch_threads: int | str = "auto") -> str:
    return (
        "version: 1\n"
        "server:\n"
        f"  host: {HOST}\n"
        "  port: 0\n"
        f"  torch_threads: {torch_threads}\n"
        f"  log: {{format: json, level: {log_level}}}\n"
        f"endpoints:\n{endpoints_yaml}"
    )


def start_servd(name: str, config_text: str, workdir: Path, root: Path = ROOT) -> Server:
    """`python -m servd run CONFIG --port P` with servd from `root`, pinned; its log goes to workdir."""
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
    # Config and log in different directories: servd watches its config's directory, and a log
    # written there would wake the watcher on every request line.
    (workdir / "config" / safe).mkdir(parents=True)
    (workdir / "log").mkdir(exist_ok=True)
    config = workdir / "config" / safe / "servd.yaml"
    config.write_text(config_text)
    port = free_port()
    argv = [sys.executable, "-m", "servd", "run", str(config), "--port", str(port)]
    return start_server(name, argv, port, "/readyz", log_path=workdir / "log" / f"{safe}.log", root=root)


def add_load_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every closed-loop benchmark takes: client counts, windows, rounds, --compare."""
    parser.add_argument("--quick", action="store_true", help="short warm-up and windows (0.3 s + 1.5 s)")
    parser.add_argument("--clients", default="1,64,256", help="comma-separated client counts")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds measured per point")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of load before each window")
    parser.add_argument("--rounds", type=int, default=1, help="repeat the sweep; each point reports its median round")
    parser.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="also measure servd from another checkout (e.g. a copy with a change), in the same run",
    )


def load_settings(args: argparse.Namespace) -> dict[str, Any]:
    """add_load_arguments' options as run()'s keyword arguments (--quick: short windows)."""
    return {
        "clients": tuple(int(c) for c in args.clients.split(",")),
        "warmup_s": 0.3 if args.quick else args.warmup,
        "duration_s": 1.5 if args.quick else args.duration,
        "rounds": args.rounds,
        "compare": tuple(parse_compare(args.compare)),
    }


def parse_compare(values: Sequence[str]) -> list[tuple[str, Path]]:
    """--compare NAME=PATH (or PATH): other servd checkouts to measure beside this one."""
    out = []
    for value in values:
        name, _, path = value.rpartition("=") if "=" in value else ("", "", value)
        root = Path(path).resolve()
        if not (root / "servd" / "__init__.py").exists():
            raise SystemExit(f"--compare {value}: no servd/ package in {root}")
        out.append((name or root.name, root))
    return out


def start_bare_echo() -> Server:
    port = free_port()
    argv = [sys.executable, "-m", "benchmarks.bare_echo", str(port)]
    return start_server("bare", argv, port, "/healthz")


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="servd-bench-") as path:
        yield Path(path)


# -- closed-loop websocket load ---------------------------------------------------------------


@dataclass
class Workload:
    """What each client sends (by its sequence number) and how a reply is recognised as right."""

    path: str
    message: Callable[[int], bytes]
    is_reply: Callable[[int, bytes], bool]
    opcode: int = 0x1  # 0x2: the messages are binary frames (servd/protocols/frames.py)


@dataclass
class Tally:
    """What the clients of one closed-loop run share: whether to go on sending, whether the
    measurement window is open, and what it counted."""

    sending: bool = True
    recording: bool = False
    latencies: list[float] = field(default_factory=list)
    count: int = 0
    wrong: int = 0
    outstanding: int = 0
    drained: asyncio.Event = field(default_factory=asyncio.Event)

    def answered(self, sent_at: float, now: float, ok: bool = True) -> bool:
        """Count one reply; whether its client sends the next request (after the window it settles)."""
        if not ok:
            self.wrong += 1
        elif self.recording:
            self.latencies.append(now - sent_at)
            self.count += 1
        if not self.sending:
            self.settle()
            return False
        self.outstanding -= 1
        return True

    def settle(self) -> None:
        """One request in flight is over for good (answered after the window, or its connection lost)."""
        self.outstanding -= 1
        if self.outstanding <= 0:
            self.drained.set()


class LoopClient(Protocol):
    transport: asyncio.Transport | None

    def send_next(self) -> None: ...


@dataclass
class _Shared(Tally):
    workload: Workload = field(kw_only=True)


def take_frames(buffer: bytearray, opened: asyncio.Future[None]) -> Iterator[tuple[int, bytes]]:
    """Consume the upgrade response (settling `opened`) and each complete frame in `buffer`."""
    if not opened.done():
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(buffer[:end])
        del buffer[: end + 4]
        if not head.startswith(b"HTTP/1.1 101"):
            opened.set_exception(ConnectionError(head.decode(errors="replace").splitlines()[0]))
            return
        opened.set_result(None)
    while len(buffer) >= 2:
        opcode, length, at = buffer[0] & 0x0F, buffer[1] & 0x7F, 2
        if length == 126:
            if len(buffer) < 4:
                return
            length, at = int.from_bytes(buffer[2:4], "big"), 4
        elif length == 127:
            if len(buffer) < 10:
                return
            length, at = int.from_bytes(buffer[2:10], "big"), 10
        if len(buffer) < at + length:
            return
        payload = bytes(buffer[at : at + length])
        del buffer[: at + length]
        yield opcode, payload


def _frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """A masked client frame; the all-zero mask key makes masking the identity (RFC 6455 allows it)."""
    n = len(payload)
    if n < 126:
        head = bytes([0x80 | opcode, 0x80 | n])
    elif n < 65536:
        head = bytes([0x80 | opcode, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 0x80 | 127]) + n.to_bytes(8, "big")
    return head + b"\x00\x00\x00\x00" + payload


class _Client(asyncio.Protocol):
    """One websocket connection in a closed loop: send, wait for the matching reply, send again."""

    def __init__(self, shared: _Shared, port: int) -> None:
        self.shared = shared
        self.port = port
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.seq = 0
        self.sent_at = 0.0
        self.waiting = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(
            f"GET {self.shared.workload.path} HTTP/1.1\r\nHost: {HOST}:{self.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"connection lost during the handshake: {exc}"))
        if self.waiting:
            self.waiting = False
            self.shared.wrong += 1
            self.shared.settle()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        for opcode, payload in take_frames(self.buffer, self.opened):
            if opcode == 0x9:  # ping
                self._write(_frame(payload, 0xA))
            elif opcode in (0x1, 0x2):
                self._on_message(payload)

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def send_next(self) -> None:
        self.seq += 1
        self.waiting = True
        self.shared.outstanding += 1
        self.sent_at = time.perf_counter()
        self._write(_frame(self.shared.workload.message(self.seq), self.shared.workload.opcode))

    def _on_message(self, payload: bytes) -> None:
        now = time.perf_counter()
        shared = self.shared
        if not self.waiting:
            shared.wrong += 1
            return
        if not shared.workload.is_reply(self.seq, payload):
            shared.wrong += 1
            return  # keep waiting for the right one (the server may send progress messages)
        self.waiting = False
        if shared.answered(self.sent_at, now):
            self.send_next()


@dataclass
class Measurement:
    clients: int
    seconds: float
    count: int
    wrong: int
    rate: float  # completed requests (or samples) per second
    p50_ms: float | None
    p99_ms: float | None
    server_cpu: float  # share of one core the server used during the window
    client_cpu: float  # share of one core the load generator used
    server_us_per_request: float | None  # server CPU time per completed request (robust to contention)
    switches_per_request: float | None  # server threads' context switches per completed request
    cores: dict[str, dict[str, float]] = field(default_factory=dict)  # busy/idle/steal per core

    def as_dict(self) -> dict[str, Any]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.__dict__.items()}

    def cores_text(self) -> str:
        return " ".join(
            f"core{c} busy {s['busy']:.0%} steal {s['steal']:.0%} idle {s['idle']:.0%}" for c, s in self.cores.items()
        )


def median_by_rate(measurements: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Of repeated measurements of one point, the one with the median rate (kept whole)."""
    ordered = sorted(measurements, key=lambda m: m["rate"])
    return ordered[(len(ordered) - 1) // 2]


def percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def closed_loop(
    server: Server, workload: Workload, clients: int, warmup_s: float, duration_s: float, per_request: int = 1
) -> Measurement:
    """`clients` connections, each with one request in flight; count what completes in the window."""
    loop = asyncio.get_running_loop()
    shared = _Shared(workload=workload)
    connections: list[_Client] = []
    try:
        for start in range(0, clients, CONNECT_CHUNK):
            batch = [
                (await loop.create_connection(lambda: _Client(shared, server.port), HOST, server.port))[1]
                for _ in range(min(CONNECT_CHUNK, clients - start))
            ]
            await asyncio.wait_for(asyncio.gather(*(c.opened for c in batch)), 30)
            connections.extend(batch)
        return await measure_window(server, shared, connections, warmup_s, duration_s, per_request)
    finally:
        for client in connections:
            if client.transport is not None:
                client.transport.close()


async def measure_window(
    server: Server,
    tally: Tally,
    connections: Sequence[LoopClient],
    warmup_s: float,
    duration_s: float,
    per_request: int = 1,
) -> Measurement:
    """Start each open connection's loop, let `warmup_s` pass, count `duration_s`, then stop sending
    and wait (DRAIN_TIMEOUT_S at most) for what is still in flight. The caller closes the connections."""
    for client in connections:
        client.send_next()
    await asyncio.sleep(warmup_s)
    server_cpu0, client_cpu0, cores0 = server.cpu_s(), time.process_time(), core_times()
    switches0 = context_switches(server.pid)
    t0 = time.perf_counter()
    tally.recording = True
    await asyncio.sleep(duration_s)
    tally.recording = False
    elapsed = time.perf_counter() - t0
    server_cpu, client_cpu = server.cpu_s() - server_cpu0, time.process_time() - client_cpu0
    cores = core_shares(cores0, core_times())
    switches = context_switches(server.pid) - switches0
    tally.sending = False
    if tally.outstanding:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(tally.drained.wait(), DRAIN_TIMEOUT_S)
    p50, p99 = percentile(tally.latencies, 0.5), percentile(tally.latencies, 0.99)
    return Measurement(
        clients=len(connections),
        seconds=elapsed,
        count=tally.count,
        wrong=tally.wrong,
        rate=tally.count * per_request / elapsed,
        p50_ms=None if p50 is None else p50 * 1000,
        p99_ms=None if p99 is None else p99 * 1000,
        server_cpu=server_cpu / elapsed,
        client_cpu=client_cpu / elapsed,
        server_us_per_request=server_cpu * 1e6 / tally.count if tally.count else None,
        switches_per_request=switches / tally.count if tally.count else None,
        cores=cores,
    )


def servd_workload(endpoint: str, data: Any) -> Workload:
    """Submit on /v1/endpoints/{endpoint}/ws with progress off; the reply is the `completed` message."""
    data_json = json.dumps(data, separators=(",", ":")).encode()
    head = b'{"type":"submit","id":'
    tail = b',"endpoint":"' + endpoint.encode() + b'","data":' + data_json + b',"progress":false}'

    def message(seq: int) -> bytes:
        return head + str(seq).encode() + tail

    def is_reply(seq: int, payload: bytes) -> bool:
        return payload.startswith(b'{"type":"completed","id":%d,' % seq)

    return Workload(f"/v1/endpoints/{endpoint}/ws", message, is_reply)


# -- output ----------------------------------------------------------------------------------


def fmt(value: Any, digits: int = 2) -> str:
    if value is None or value is False:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers], *[[fmt(v) for v in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_json(name: str, result: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def progress_line(m: Measurement) -> str:
    """One measurement as it finishes: rate, latency, who used the CPU."""
    return (
        f"clients={m.clients:<4} {m.rate:9.0f}/s  p50 {fmt(m.p50_ms, 3)} ms  p99 {fmt(m.p99_ms, 3)} ms"
        f"  cpu server {m.server_cpu:.0%} ({fmt(m.server_us_per_request, 0)} us/req,"
        f" {fmt(m.switches_per_request)} switches/req) client {m.client_cpu:.0%}"
        + (f"  WRONG REPLIES {m.wrong}" if m.wrong else "")
        + f"  [{m.cores_text()}]"
    )


def summary_row(what: str, value: float | None, target: float | None, *, higher: bool = True) -> dict[str, Any]:
    """A line of the summary table: a ratio or latency, its target if the issue set one, met or not."""
    ok = None
    if target is not None and value is not None:
        ok = value >= target if higher else value < target
    return {
        "what": what,
        "value": value,
        "target": None if target is None else f"{'>=' if higher else '<'} {target}",
        "ok": ok,
    }
