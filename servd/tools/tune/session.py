"""One `servd tune` run: read the file, reach a daemon, drive the search with measurements, finish.

Each trial: the file is rendered from its original text with the trial's values (servd.config.yamledit,
so nothing else in it moves), checked with servd.config.spec.parse, saved atomically, and the reload
awaited in /v1/status; then `servd bench`'s engine (`bench.run_level`) warms up and measures at
the trial's client count; then /v1/endpoints gives the working batch size (lowered after an
out-of-memory). Before any load, one request with the sample must succeed, so an endpoint that
fails it, or a sample that fails input_schema (checked here first, before any daemon starts),
ends the tune at once with the server's own message.

The loop is asyncio; `run` owns the loop and, in its `finally`, the clean-up (Ctrl-C there is
ignored so a restore can't be cut in half).
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from servd.client._http import Target as UrlTarget
from servd.config.schema import SpecError, parse_yaml
from servd.config.spec import parse
from servd.config.yamledit import EditError, edit
from servd.inputs.validation import InputCheck
from servd.tools import bench
from servd.tools.tune.model import KNOBS, Goal, Limits, Measure, Setting, Trial
from servd.tools.tune.report import Report, pareto, tuned_values
from servd.tools.tune.search import Search
from servd.tools.tune.target import ConfigFile, Target, TuneError, read_text

PROGRESS_INTERVAL_S = 0.25
DRAIN_S = 10.0  # answers still owed after a point's load: servd answers each, so this is a bound


@dataclass(frozen=True)
class Options:
    file: Path
    endpoint: str
    data_json: str
    p99_s: float | None
    clients: tuple[int, ...]
    duration_s: float
    warmup_s: float
    url: str | None
    token: str | None
    transport: str
    knobs: frozenset[str]
    max_batch: int
    max_concurrency: int
    max_clients: int
    max_points: int
    write: bool
    json: bool
    plot: Path | None
    progress: bool


@dataclass(frozen=True)
class Plan:
    """What the file says about the endpoint, and what the search may do with it."""

    name: str
    original: str
    start: Setting
    goal: Goal
    limits: Limits
    devices: tuple[str, ...]  # the file's `device` list when it has two or more entries, else ()

    def render(self, setting: Setting) -> str:
        """The original file with the values of `setting` that differ from the start's."""
        start = tuned_values(self.start, self.devices)
        changes = {
            ("endpoints", self.name, *path): value
            for path, value in tuned_values(setting, self.devices).items()
            if start.get(path) != value
        }
        try:
            return edit(self.original, changes) if changes else self.original
        except EditError as exc:
            raise TuneError(str(exc)) from None


def prepare(options: Options) -> Plan:
    """The plan for `options.file`, or TuneError: the file's problems, an unknown endpoint, a bad sample."""
    try:
        spec = parse(options.file)
    except SpecError as exc:
        raise TuneError(f"{options.file} does not check:\n{exc}") from None
    endpoint = spec.endpoints.get(options.endpoint)
    if endpoint is None:
        raise TuneError(f"{options.file} has no endpoint {options.endpoint!r}; it has {', '.join(spec.endpoints)}")
    if endpoint.input_schema is not None:
        problem = InputCheck(endpoint.input_schema).problem(json.loads(options.data_json))
        if problem is not None:
            raise TuneError(f"the sample fails endpoints.{options.endpoint}.input_schema: {problem}")
    original = read_text(options.file)
    raw = parse_yaml(original, str(options.file)).data["endpoints"][options.endpoint].get("device")
    devices = tuple(raw) if isinstance(raw, list) and len(raw) > 1 else ()
    batch = endpoint.batch
    start = Setting(
        concurrency=endpoint.concurrency,
        max_size=None if batch is None else batch.max_size,
        max_delay_ms=None if batch is None else batch.max_delay_ms,
        instances=len(devices) or 1,
    )
    limits = Limits(
        max_batch=options.max_batch, max_concurrency=options.max_concurrency,
        max_threads=spec.server.max_threads, max_instances=len(devices) or 1, clients=options.clients,
        max_clients=options.max_clients, max_points=options.max_points,
        knobs=frozenset(k for k in KNOBS if k in options.knobs),
        delay_when_idle=batch is not None and batch.wait == "always",
    )  # fmt: skip
    return Plan(options.endpoint, original, start, Goal(options.p99_s), limits, devices)


def run(options: Options, plan: Plan) -> tuple[Report, bool]:
    """The whole tune: (its report, whether --write saved the choice). The file is restored and a
    started daemon stopped whatever happens."""
    target = (
        Target(_http_url(options.url), options.token, ConfigFile(options.file, plan.original)) if options.url else None
    )
    try:
        if target is None:
            target = Target.start(options.file, options.token)
            print(f"servd tune: started servd run (pid {target.proc.pid if target.proc else '?'}) on a scratch "
                  f"copy of {options.file}", file=sys.stderr)  # fmt: skip
        session = Session(options, plan, target)
        return asyncio.run(session.run())
    finally:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            for warning in target.close() if target is not None else []:
                print(f"servd tune: {warning}", file=sys.stderr)
        finally:
            signal.signal(signal.SIGINT, previous)


def _http_url(url: str) -> str:
    try:
        return UrlTarget.parse(url).http_url("")
    except ValueError as exc:
        raise TuneError(f"--url: {exc}") from None


def trial_check(path: Path) -> None:
    parse(path)


def full_check(path: Path) -> None:
    """servd's own load_checked: what `servd check` and the daemon's reload accept."""
    from servd.daemon.loading import load_checked

    load_checked(path)


class Session:
    """One tune on one daemon: ready it, probe it with the sample, measure each trial, finish the file."""

    def __init__(self, options: Options, plan: Plan, target: Target) -> None:
        self.options = options
        self.plan = plan
        self.target = target
        self.progress = Progress(options, plan)

    async def run(self) -> tuple[Report, bool]:
        began = time.monotonic()
        search = Search(self.plan.start, self.plan.goal, self.plan.limits)
        ticker = asyncio.ensure_future(self.progress.show()) if self.options.progress else None
        try:
            if self.target.proc is not None:
                await self.target.wait_ready()
            else:
                await self._check_served_file()
            await self._probe()
            await self._drive(search)
        finally:
            if ticker is not None:
                ticker.cancel()
                sys.stderr.write("\r\033[K")
        written = await self._finish(search)
        report = Report(
            file=str(self.options.file), endpoint=self.plan.name, goal=self.plan.goal, search=search,
            front=pareto(search.points), devices=self.plan.devices, duration_s=self.options.duration_s,
            warmup_s=self.options.warmup_s, elapsed_s=time.monotonic() - began,
        )  # fmt: skip
        return report, written

    async def _check_served_file(self) -> None:
        served = (await self.target.get("/v1/status")).get("config")
        if served is None or Path(served).resolve() != self.options.file.resolve():
            raise TuneError(f"the daemon at {self.target.url} serves {served}, not {self.options.file}; tune the "
                            "file it serves (the tuner changes settings through it)")  # fmt: skip
        await self.target.endpoint(self.plan.name)

    async def _probe(self) -> None:
        """One request with the sample before any load: a failure here is the user's to fix."""
        from servd.client import AsyncClient, ServdError

        name, data = self.plan.name, json.loads(self.options.data_json)
        url = self.target.url.replace("http://", "ws://", 1) if self.options.transport == "ws" else self.target.url
        try:
            async with AsyncClient(url, token=self.target.token, transport=self.options.transport) as client:  # type: ignore[arg-type]
                await client.predict(name, data, timeout=120)
        except ServdError as exc:
            if exc.code == "invalid_input":
                raise TuneError(f"the sample fails endpoints.{name}.input_schema: {exc.message}") from None
            if exc.code == "endpoint_failed":
                raise TuneError(f"endpoint {name} fails on the sample ({exc.message}); tune needs one that "
                                "answers it") from None  # fmt: skip
            raise TuneError(f"endpoint {name} refused the sample: {exc.code}: {exc.message}") from None

    async def _drive(self, search: Search) -> None:
        steps = search.run()
        try:
            trial = next(steps)
            while True:
                trial = steps.send(await self._measure(trial))
        except StopIteration:
            pass

    async def _measure(self, trial: Trial) -> Measure:
        self.progress.begin(trial, "reloading")
        await self.target.apply(self.plan.render(trial.setting), trial_check)
        self.progress.stage("load")
        options = bench.Options(
            url=self.target.url, endpoint=self.plan.name, clients=(trial.clients,), duration_s=self.options.duration_s,
            data_json=self.options.data_json, transport=self.options.transport, warmup_s=self.options.warmup_s,
            token=self.target.token, drain_s=DRAIN_S,
        )  # fmt: skip
        try:
            level = await bench.run_level(options, trial.clients)
        except Exception as exc:  # noqa: BLE001 - the bench's connection errors, in the tuner's words
            raise TuneError(f"load on {self.target.url} failed: {type(exc).__name__}: {exc}") from None
        stats = (await self.target.endpoint(self.plan.name)).get("stats", {})
        measure = measure_of(level, stats)
        self.progress.done(measure)
        return measure

    async def _finish(self, search: Search) -> bool:
        """Put the file as it should stay: the choice with --write, else what it was; True if written."""
        chosen = search.chosen
        text = self.plan.render(chosen.setting) if chosen is not None and self.options.write else self.plan.original
        if self.target.scratch is None:  # attached: the daemon reloads it, as from any save
            await self.target.apply(text, full_check if text != self.plan.original else trial_check)
            self.target.config.original = text
            return text != self.plan.original
        if text == self.plan.original:
            return False
        ConfigFile(self.options.file, self.plan.original).write(text, full_check)
        return True


def measure_of(level: dict[str, Any], stats: dict[str, Any]) -> Measure:
    """A bench level's summary and the endpoint's stats after it, as the search reads them."""
    latency = level["latency_s"]
    batches = {int(size): count for size, count in level.get("batch_sizes", {}).items()}
    calls = sum(count / size for size, count in batches.items())
    errors = dict(level.get("errors", {}))
    if level.get("lost"):
        errors["lost"] = level["lost"]
    working = stats.get("batch_size")
    return Measure(
        throughput=float(level["throughput_rps"]), p50_s=latency["total"]["p50"], p99_s=latency["total"]["p99"],
        completed=int(level["completed"]), errors=errors, mean_batch=sum(batches.values()) / calls if calls else None,
        run_p50_s=latency["run"]["p50"], wait_p50_s=latency["queue"]["p50"],
        working_batch=working if isinstance(working, int) else None,
    )  # fmt: skip


class Progress:
    """The live line on stderr: which point, its setting and load, where it is, the best so far."""

    def __init__(self, options: Options, plan: Plan) -> None:
        self.options = options
        self.plan = plan
        self.count = 0
        self.trial: Trial | None = None
        self.state = "starting"
        self.since = time.monotonic()
        self.best: Measure | None = None

    def begin(self, trial: Trial, state: str) -> None:
        self.count += 1
        self.trial = trial
        self.stage(state)

    def stage(self, state: str) -> None:
        self.state, self.since = state, time.monotonic()

    def done(self, measure: Measure) -> None:
        goal = self.plan.goal
        meets = goal.p99_s is None or (measure.p99_s is not None and measure.p99_s <= goal.p99_s)
        if meets and not measure.error_count and (self.best is None or measure.throughput > self.best.throughput):
            self.best = measure

    def line(self) -> str:
        trial = self.trial
        if trial is None:
            return "servd tune: waiting for servd to load the models and answer the sample"
        s = trial.setting
        setting = f"conc {s.concurrency}"
        if s.max_size is not None:
            setting += f" batch {s.max_size} delay {s.max_delay_ms:g}"
        elapsed, warm, measured = time.monotonic() - self.since, self.options.warmup_s, self.options.duration_s
        state = self.state
        if state == "load":
            state = f"warm-up {elapsed:.1f}/{warm:g}s" if elapsed < warm else ""
            state = state or f"measuring {min(elapsed - warm, measured):.1f}/{measured:g}s"
        best = ""
        if self.best is not None:
            best = f"  best {self.best.throughput:.0f} req/s p99 {(self.best.p99_s or 0) * 1e3:.1f} ms"
        where = f"point {self.count}/{self.plan.limits.max_points} {trial.phase}"
        return f"{where}: {setting}, {trial.clients} clients  {state}{best}"

    async def show(self) -> None:
        while True:
            sys.stderr.write("\r\033[K" + self.line()[:200])
            sys.stderr.flush()
            await asyncio.sleep(PROGRESS_INTERVAL_S)
