"""What `servd tune` tries, in what order, and when it stops: a pure search, no daemon, no clock.

`Search.run()` is a generator: it yields a `Trial` (a setting and a number of clients) and is sent
back the `Measure` of it, so tests drive it with a model of known cost and the tuner with a
daemon under load. From the file's setting it climbs one knob at a time in powers of two:
batch.max_size, the instance count (of a `device` list), concurrency, batch.max_delay_ms, then
batch.max_size again around the result. A climb takes a step only if it beats the best so far
by GAIN (a noise margin; in a close call the best so far is measured again first, as the
machine's speed drifts), and stops at the first step that doesn't, or earlier on what servd
measured:

- out of memory: the working batch size (/v1/endpoints stats.batch_size) fell below max_size, so
  servd halved a failed batch; nothing that large is tried again, and it is never chosen;
- calls don't fill: the mean batch was half of max_size or less at the highest load that ran
  cleanly, so a larger max_size would not be used;
- diminishing returns: the throughput at this max_size and at half of it, against the mean batch
  each formed, fits a cost per request + a cost per call; a next doubling predicted under GAIN
  is not tried;
- slots idle: queue wait p50 under IDLE_WAIT of the run p50, so more concurrency has nothing to take;
- contention: the run time of a call grew in proportion to concurrency (one device, or the GIL);
- max_delay_ms is tried around the measured run time of a call, where it can matter.

Each setting is measured at a rising number of clients, from its capacity (concurrency x
instances x max_size) up, doubling until throughput grows less than GROWTH at two levels in a
row (one may be noise); with a p99 goal, a level over the goal ends the climb, and a start over
it halves the clients instead. A setting is scored by its best level (with a p99 goal, the most
throughput under it). Limits: at most `max_points` trials in all, including the four that
re-measure the start and the choice back to back at the end (start, choice, choice, start, so
drift cancels and the gain compares like with like).
"""

from __future__ import annotations

import math
from collections.abc import Generator

from servd.tools.tune.model import Goal, Limits, Measure, Point, Setting, Trial, Tried

GROWTH = 0.10  # more clients must add this much throughput to go on raising them ...
PATIENCE = 1  # ... but one level that doesn't may be noise: the next one decides
GAIN = 0.05  # a new setting must beat the best so far by this much to be taken
IDLE_WAIT = 0.1  # queue wait p50 / run p50 under this: requests find a free slot
CONTENTION = 0.8  # run p50 grew by this share of the concurrency ratio or more: the calls contend
CLOSE = 0.2  # a challenger within this of the best so far is a close call: recheck the best first
RECHECK_AFTER = 3  # ... if the best's measurement is this many points old or more
CONFIRM_POINTS = 4


class Search:
    def __init__(self, start: Setting, goal: Goal, limits: Limits) -> None:
        self.start = start
        self.goal = goal
        self.limits = limits
        self.points: list[Point] = []
        self.tried: dict[Setting, Tried] = {}
        self.notes: list[str] = []
        self.oom_at: int | None = None  # the smallest max_size that ran out of memory
        self.chosen: Tried | None = None  # None: nothing met the goal
        self.confirmed: tuple[Point, Point, Point, Point] | None = None  # start, chosen, chosen, start
        self.candidate: Tried | None = None  # a choice that the re-measure sent back to the start

    def run(self) -> Generator[Trial, Measure, None]:
        start = yield from self.sweep(self.start, "start")
        if start is None or start.best(self.goal).measure.completed == 0:
            return  # nothing completes: the tuner reports the errors
        best = start
        best = yield from self.climb_batch(best, "max_size")
        best = yield from self.climb_instances(best)
        best = yield from self.climb_concurrency(best)
        best = yield from self.try_delays(best)
        best = yield from self.climb_batch(best, "refine")
        self.chosen = self.choose(best)
        yield from self.confirm(start)

    # -- measuring one setting -----------------------------------------------------------------

    def budget(self) -> int:
        return self.limits.max_points - CONFIRM_POINTS - len(self.points)

    def measure(self, setting: Setting, clients: int, phase: str) -> Generator[Trial, Measure, Point]:
        trial = Trial(setting, clients, phase)
        measure = yield trial
        working = measure.working_batch
        oom = setting.max_size is not None and working is not None and working < setting.max_size
        point = Point(len(self.points) + 1, trial, measure, oom)
        self.points.append(point)
        if oom and (self.oom_at is None or setting.max_size < self.oom_at):  # type: ignore[operator]
            self.oom_at = setting.max_size
        return point

    def sweep(self, setting: Setting, phase: str, near: int | None = None) -> Generator[Trial, Measure, Tried | None]:
        """The setting measured at rising load (or at the fixed levels); None when out of budget.

        With a p99 goal the first level is `near` (where the setting it came from did best), since
        neighbouring settings meet the goal at similar loads; else its capacity, where throughput
        can first saturate."""
        if setting in self.tried:
            return self.tried[setting]
        if self.budget() <= 0:
            self.note_once("stopped searching: --max-points reached")
            return None
        tried = self.tried[setting] = Tried(setting)
        for clients in self.limits.clients:
            tried.points.append((yield from self.measure(setting, clients, phase)))
            if tried.points[-1].oom or self.budget() <= 0:
                break
        if not self.limits.clients:
            first = near if near is not None and self.goal.p99_s is not None else tried.setting.capacity
            yield from self.rise(tried, phase, min(self.limits.max_clients, _power_of_two_at_least(first)))
        return tried

    def rise(self, tried: Tried, phase: str, clients: int) -> Generator[Trial, Measure, None]:
        point = yield from self.measure(tried.setting, clients, phase)
        tried.points.append(point)
        if point.oom or point.measure.completed == 0:
            return
        if self.goal.p99_s is not None and not self.goal.meets(point):
            while clients > 1 and not self.goal.meets(point) and not point.oom and self.budget() > 0:
                clients //= 2  # too much load for the goal: lighter
                point = yield from self.measure(tried.setting, clients, phase)
                tried.points.append(point)
            return
        most, misses = point.measure.throughput, 0
        while clients * 2 <= self.limits.max_clients and self.budget() > 0:
            clients *= 2
            point = yield from self.measure(tried.setting, clients, phase)
            tried.points.append(point)
            if point.oom or not self.goal.meets(point):
                return
            grew = point.measure.throughput >= most * (1 + GROWTH)
            misses = 0 if grew else misses + 1
            if misses > PATIENCE:
                return
            most = max(most, point.measure.throughput)

    def wins(self, challenger: Tried, best: Tried) -> Generator[Trial, Measure, bool]:
        """Whether `challenger` beats `best`. A close call against a measurement RECHECK_AFTER points
        old or more first measures `best` again at its best load: the machine's speed drifts (other
        work on it), and a lucky old number would otherwise block every step after it."""
        old = best.best(self.goal)
        if self.close(challenger, best) and len(self.points) - old.index >= RECHECK_AFTER and self.budget() > 0:
            best.points.append((yield from self.measure(best.setting, old.trial.clients, "recheck")))
        return self.better(challenger, best)

    def close(self, challenger: Tried, best: Tried) -> bool:
        new, old = self.goal.score(challenger.best(self.goal)), self.goal.score(best.best(self.goal))
        return new[0] == old[0] == 2 and old[1] / (1 + CLOSE) <= new[1] <= old[1] * (1 + CLOSE)

    def better(self, challenger: Tried, best: Tried) -> bool:
        new, old = self.goal.score(challenger.best(self.goal)), self.goal.score(best.best(self.goal))
        if new[0] != old[0]:
            return new[0] > old[0]
        if new[0] == 2:
            return new[1] > old[1] * (1 + GAIN)
        return new[1] > old[1] + abs(old[1]) * GAIN

    # -- the climbs ------------------------------------------------------------------------------

    def climb_batch(self, best: Tried, phase: str) -> Generator[Trial, Measure, Tried]:
        if "max_size" not in self.limits.knobs or best.setting.max_size is None:
            return best
        start = best
        while self.budget() > 0:
            reason = self.why_not_larger_batch(best)
            if reason is not None:
                self.note_once(reason)
                break
            tried = yield from self.step(best, phase, max_size=(best.setting.max_size or 1) * 2)
            if tried is not None and tried.oom:
                self.note_once(self.why_not_larger_batch(best) or "")
            if tried is None or tried.oom or not (yield from self.wins(tried, best)):
                break
            best = tried
        if best is not start:
            return best
        while (best.setting.max_size or 1) > 1:
            tried = yield from self.step(best, phase, max_size=(best.setting.max_size or 1) // 2)
            if tried is None or not (yield from self.wins(tried, best)):
                break
            best = tried
        return best

    def step(self, best: Tried, phase: str, **change: int | float) -> Generator[Trial, Measure, Tried | None]:
        """The setting one step from `best`, swept starting near the load where `best` did best."""
        return (yield from self.sweep(best.setting.with_(**change), phase, near=best.best(self.goal).trial.clients))

    def why_not_larger_batch(self, best: Tried) -> str | None:
        size = best.setting.max_size or 1
        if size * 2 > self.limits.max_batch:
            return f"batch.max_size: stopped at {size}, the cap (--max-batch {self.limits.max_batch})"
        if self.oom_at is not None and size * 2 >= self.oom_at:
            return (
                f"batch.max_size: stopped at {size}: {self.oom_at} ran out of memory (the working batch size fell "
                "below it); nothing larger is tried"
            )
        loaded = best.loaded()
        mean = loaded.measure.mean_batch
        if mean is not None and mean <= size / 2:
            return (
                f"batch.max_size: stopped at {size}: calls carried {mean:.1f} requests on average at "
                f"{loaded.trial.clients} clients, half of max_size or less, so a larger one would not fill"
            )
        predicted = self.next_doubling(best)
        if predicted is not None and predicted[0] < GAIN:
            return f"batch.max_size: stopped at {size}: {predicted[1]}"
        return None

    def next_doubling(self, best: Tried) -> tuple[float, str] | None:
        """What doubling max_size again would gain, from the throughput at this size and at half of it.

        Per request a call costs t(n) = a + b/n at a mean batch of n: `a` the work of each request,
        `b` what a call costs whatever its size (the model's fixed cost and servd's hand-offs), which
        a larger batch shares out. Two sizes fit a and b; None where they don't make a fit.
        """
        half = self.tried.get(best.setting.with_(max_size=(best.setting.max_size or 1) // 2))
        if half is None:
            return None
        big, small = best.best(self.goal), half.best(self.goal)
        n1, n2 = small.measure.mean_batch, big.measure.mean_batch
        if not (self.goal.meets(big) and self.goal.meets(small) and n1 and n2 and n2 > 1.3 * n1):
            return None
        t1, t2 = 1 / small.measure.throughput, 1 / big.measure.throughput
        b = (t1 - t2) / (1 / n1 - 1 / n2)
        a = t2 - b / n2
        if a <= 0 or b < 0:
            return None
        gain = (a + b / n2) / (a + b / (2 * n2)) - 1
        return gain, (
            f"calls of {n1:.1f} and {n2:.1f} requests (mean) served {small.measure.throughput:.0f} and "
            f"{big.measure.throughput:.0f} req/s: {a * 1e6:.0f} us a request + {b * 1e6:.0f} us a call, so "
            f"calls twice as large would gain about {gain:+.0%}"
        )

    def climb_instances(self, best: Tried) -> Generator[Trial, Measure, Tried]:
        if "instances" not in self.limits.knobs or self.limits.max_instances <= 1:
            return best
        return (yield from self.halve(best, "instances"))

    def climb_concurrency(self, best: Tried) -> Generator[Trial, Measure, Tried]:
        if "concurrency" not in self.limits.knobs:
            return best
        start = best
        while (reason := self.why_not_more_slots(best)) is None:
            tried = yield from self.step(best, "concurrency", concurrency=best.setting.concurrency * 2)
            if tried is None:
                break
            contended = self.contention(best, tried)
            if contended is not None:
                self.note_once(contended)
            if not (yield from self.wins(tried, best)):
                break
            best = tried
            if contended is not None:
                break
        if reason is not None:
            self.note_once(reason)
        if best is not start:
            return best
        return (yield from self.halve(best, "concurrency"))

    def halve(self, best: Tried, knob: str) -> Generator[Trial, Measure, Tried]:
        """Halve the whole-number `knob` (concurrency, instances) while that wins: the same
        throughput from fewer threads or models."""
        while (value := getattr(best.setting, knob)) > 1:
            tried = yield from self.step(best, knob, **{knob: value // 2})
            if tried is None or not (yield from self.wins(tried, best)):
                break
            best = tried
        return best

    def why_not_more_slots(self, best: Tried) -> str | None:
        setting = best.setting
        if setting.concurrency * 2 > self.limits.max_concurrency:
            return f"concurrency: stopped at {setting.concurrency}, the cap (--max-concurrency)"
        if setting.concurrency * 2 * setting.instances > self.limits.max_threads:
            return f"concurrency: stopped at {setting.concurrency}: server.max_threads={self.limits.max_threads}"
        loaded = best.loaded()
        m = loaded.measure
        if m.wait_p50_s is not None and m.run_p50_s and m.wait_p50_s < IDLE_WAIT * m.run_p50_s:
            return (
                f"concurrency: stopped at {setting.concurrency}: at {loaded.trial.clients} clients requests waited "
                f"{m.wait_p50_s * 1e3:.2f} ms (p50) against {m.run_p50_s * 1e3:.2f} ms running, so more slots "
                "would stand idle"
            )
        return None

    def contention(self, low: Tried, high: Tried) -> str | None:
        before, after = low.best(self.goal).measure.run_p50_s, high.best(self.goal).measure.run_p50_s
        ratio = high.setting.concurrency / low.setting.concurrency
        if before and after and after / before >= 1 + CONTENTION * (ratio - 1):
            return (
                f"concurrency: a call took {before * 1e3:.2f} ms at {low.setting.concurrency} and "
                f"{after * 1e3:.2f} ms at {high.setting.concurrency} (p50): the calls share one device (or the "
                "GIL), so more slots only queue inside it"
            )
        return None

    def try_delays(self, best: Tried) -> Generator[Trial, Measure, Tried]:
        if "max_delay_ms" not in self.limits.knobs or best.setting.max_size is None:
            return best
        if best.setting.concurrency * best.setting.instances == 1 and not self.limits.delay_when_idle:
            self.note_once(
                "batch.max_delay_ms: not tried: with one slot and batch.wait: when_busy, a call starts as soon as "
                "the slot is free, so no batch ever waits for company"
            )
            return best
        run_s = best.best(self.goal).measure.run_p50_s
        if run_s is None:
            return best
        run_ms = run_s * 1e3
        current = best.setting.max_delay_ms
        choices = sorted({_round_ms(run_ms * f) for f in (0.0, 0.5, 1.0)} - {current})
        self.note_once(f"batch.max_delay_ms: tried around the run time of a call ({run_ms:.2f} ms p50)")
        winner = best
        for delay in choices:
            tried = yield from self.step(best, "max_delay_ms", max_delay_ms=delay)
            if tried is None:
                break
            if (yield from self.wins(tried, winner)):
                winner = tried
        return winner

    # -- the result ---------------------------------------------------------------------------------

    def choose(self, best: Tried) -> Tried | None:
        """Where the climbs ended, if it meets the goal; else the best setting that does, if any."""
        if not best.oom and self.goal.meets(best.best(self.goal)):
            return best
        usable = [t for t in self.tried.values() if not t.oom and self.goal.meets(t.best(self.goal))]
        return max(usable, key=lambda t: self.goal.score(t.best(self.goal))) if usable else None

    def confirm(self, start: Tried) -> Generator[Trial, Measure, None]:
        """Measure start, choice, choice, start back to back (drift in the machine's speed cancels out
        of ABBA); a choice that gains less than GAIN there gives way to the start."""
        chosen = self.chosen
        if chosen is None or chosen is start:
            return
        order = (start, chosen, chosen, start)
        points = []
        for tried in order:
            points.append((yield from self.measure(tried.setting, tried.best(self.goal).trial.clients, "confirm")))
        self.confirmed = (points[0], points[1], points[2], points[3])
        why = self.unconfirmed()
        if why is not None and self.goal.meets(start.best(self.goal)):
            self.note_once(f"the choice {why} re-measured back to back: the start stays")
            self.candidate, self.chosen = chosen, start

    def unconfirmed(self) -> str | None:
        """Why the back-to-back re-measure doesn't bear the choice out, or None."""
        gain = self.confirmed_gain
        if gain is not None and gain < GAIN:
            return f"gained {gain:+.0%}, under {GAIN:.0%},"
        assert self.confirmed is not None
        p99 = sum(p.measure.p99_s or math.inf for p in self.confirmed[1:3]) / 2
        if self.goal.p99_s is not None and p99 > self.goal.p99_s:
            return f"had a p99 of {p99 * 1e3:.1f} ms (mean of two), over the goal,"
        return None

    @property
    def confirmed_gain(self) -> float | None:
        """Throughput of the choice over the start's in the back-to-back re-measure."""
        if self.confirmed is None:
            return None
        a1, b1, b2, a2 = (p.measure.throughput for p in self.confirmed)
        return (b1 + b2) / (a1 + a2) - 1 if a1 + a2 else None

    def note_once(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)


def _power_of_two_at_least(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def _round_ms(ms: float) -> float:
    """Delays worth writing: 0, tenths under 1 ms, halves under 10 ms, whole ms above."""
    if ms < 0.05:
        return 0.0
    if ms < 1:
        return round(ms, 1)
    if ms < 10:
        return round(ms * 2) / 2
    return float(round(ms))
