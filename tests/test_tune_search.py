"""servd.tools.tune.search against a model of known cost: it finds the best setting, stops where it should (#16).

The model is a closed loop on a batched endpoint whose call of n inputs takes a + b*n ms, with
`parallel` calls at once on the device (more slots make each call slower in proportion), and an
out-of-memory above `memory` inputs (servd halves the batch: the working batch size drops).
"""

from __future__ import annotations

import math

from servd.tools.tune.model import Goal, Limits, Measure, Point, Setting, Trial
from servd.tools.tune.report import pareto
from servd.tools.tune.search import Search

START = Setting(concurrency=1, max_size=4, max_delay_ms=5.0)


def model(a_ms: float, b_ms: float, parallel: int = 1, memory: int | None = None):
    def measure(trial: Trial) -> Measure:
        s, clients = trial.setting, trial.clients
        size, slots = s.max_size or 1, s.concurrency * s.instances
        working = size
        if memory is not None and min(size, math.ceil(clients / slots)) > memory:
            while working > memory:
                working //= 2
        per_call = max(1, min(working, math.ceil(clients / slots)))
        call_s = (a_ms + b_ms * per_call) / 1e3 * max(1.0, s.concurrency / parallel)
        throughput = min(slots * per_call / call_s, clients / call_s)
        latency = clients / throughput
        return Measure(
            throughput=throughput, p50_s=latency, p99_s=1.3 * latency, completed=int(throughput) + 1,
            mean_batch=per_call, run_p50_s=call_s, wait_p50_s=latency - call_s, working_batch=working,
        )  # fmt: skip

    return measure


def drive(search: Search, measure) -> Search:
    steps = search.run()
    try:
        trial = next(steps)
        while True:
            trial = steps.send(measure(trial))
    except StopIteration:
        return search


def test_most_throughput_is_the_largest_batch_that_fits_with_slots_for_the_device():
    """a=20 ms, b=1 ms per input, 2 calls at once, memory for 16: batch 16, concurrency 2."""
    search = drive(Search(START, Goal(), Limits()), model(20, 1, parallel=2, memory=16))
    assert search.chosen is not None
    assert search.chosen.setting.max_size == 16
    assert search.chosen.setting.concurrency == 2
    assert search.confirmed is not None and [p.setting for p in search.confirmed] == [
        START,
        *[search.chosen.setting] * 2,
        START,
    ]
    assert search.confirmed_gain is not None and search.confirmed_gain > 1


def test_the_batch_climb_stops_at_the_first_out_of_memory():
    """Nothing above the first size that ran out of memory is tried, and that size is never chosen."""
    search = drive(Search(START, Goal(), Limits(max_batch=1024)), model(20, 1, memory=16))
    sizes = {p.setting.max_size for p in search.points}
    assert max(sizes) == 32
    assert [p.oom for p in search.points if p.setting.max_size == 32] == [True]
    assert search.chosen is not None and search.chosen.setting.max_size == 16
    assert any("32 ran out of memory" in note for note in search.notes)


def test_a_p99_goal_picks_the_largest_batch_whose_latency_meets_it():
    """a=10 ms, b=2 ms: a full batch of n takes 10+2n ms, p99 = 1.3x that; under 60 ms n <= 16 (p99 54.6 ms)."""
    goal = Goal(p99_s=0.060)
    search = drive(Search(Setting(1, 2, 5.0), goal, Limits()), model(10, 2))
    assert search.chosen is not None
    best = search.chosen.best(goal)
    assert best.setting.max_size in (16, 32)  # 32 at 16 clients forms batches of 16: the same point
    assert best.measure.p99_s is not None and best.measure.p99_s <= 0.060
    better = [p for p in search.points if p.measure.throughput > best.measure.throughput * 1.05]
    assert better and all(not goal.meets(p) for p in better)  # more throughput was there, over the goal


def test_a_choice_that_the_back_to_back_re_measure_does_not_confirm_gives_way_to_the_start():
    """The search saw batch 8 win (the machine was fast then); measured start/8/8/start it gains nothing."""
    fast = model(20, 1)
    seen: list[Trial] = []

    def drifting(trial: Trial) -> Measure:
        seen.append(trial)
        measure = fast(trial)
        if trial.phase == "confirm" and trial.setting.max_size == 8:
            return Measure(167.0, measure.p50_s, measure.p99_s, measure.completed, mean_batch=measure.mean_batch,
                           run_p50_s=measure.run_p50_s, wait_p50_s=measure.wait_p50_s, working_batch=8)  # fmt: skip
        return measure

    search = drive(Search(START, Goal(), Limits(max_batch=8, knobs=frozenset({"max_size"}))), drifting)
    assert search.chosen is not None and search.chosen.setting == START
    assert search.candidate is not None and search.candidate.setting.max_size == 8
    assert any("the start stays" in note for note in search.notes)


def test_no_setting_meeting_the_goal_chooses_nothing():
    """A p99 goal of 1 ms on calls of 20 ms or more can't be met: tune chooses nothing and confirms nothing,
    after trying the lightest load (one client) to be sure."""
    search = drive(Search(START, Goal(p99_s=0.001), Limits(max_points=20)), model(20, 1))
    assert search.chosen is None
    assert search.confirmed is None
    assert all(p.trial.clients == 1 for p in search.points[-3:])  # it tried the lightest load


def test_batches_that_do_not_fill_stop_the_batch_climb():
    """With 4 clients a call never carries more than 4: max_size 8 is half empty, so 16 is not tried."""
    search = drive(Search(START.with_(max_size=8), Goal(), Limits(clients=(4,))), model(20, 1))
    assert max(p.setting.max_size or 0 for p in search.points) == 8
    assert any("would not fill" in note for note in search.notes)


def test_diminishing_returns_stop_the_batch_climb_before_a_step_that_cannot_pay():
    """4 ms + 1 ms an input: 32 -> 64 still gains 6%, so 64 is taken; the fit then predicts 3% for 128,
    under the 5% a step must gain, so 128 is not tried."""
    search = drive(Search(START.with_(max_size=8), Goal(), Limits(knobs=frozenset({"max_size"}))), model(4, 1))
    assert max(p.setting.max_size or 0 for p in search.points) == 64
    assert search.chosen is not None and search.chosen.setting.max_size == 64
    assert any("calls twice as large would gain about +3%" in note for note in search.notes)


def test_concurrency_stays_within_server_max_threads_and_instances():
    """Three instances and max_threads 8: concurrency stops at 2 (2 x 3 <= 8 < 4 x 3)."""
    start = Setting(concurrency=1, max_size=8, max_delay_ms=5.0, instances=3)
    limits = Limits(max_threads=8, max_instances=3, knobs=frozenset({"concurrency"}))
    search = drive(Search(start, Goal(), limits), model(20, 1, parallel=8))
    assert max(p.setting.concurrency * p.setting.instances for p in search.points) <= 8
    assert search.chosen is not None and search.chosen.setting.concurrency == 2
    assert any("server.max_threads=8" in note for note in search.notes)


def test_fewer_instances_win_when_they_share_one_device():
    """Instances on one device: each extra one slows every call; halving the instance list is tried and kept."""

    def shared(trial: Trial) -> Measure:
        alone = Trial(trial.setting.with_(instances=1), trial.clients, trial.phase)
        measure = model(20, 1)(alone)
        slow = 1 + 0.3 * (trial.setting.instances - 1)  # they thrash
        return Measure(measure.throughput / slow, measure.p50_s, measure.p99_s, measure.completed,
                       mean_batch=measure.mean_batch, run_p50_s=measure.run_p50_s, wait_p50_s=measure.wait_p50_s,
                       working_batch=measure.working_batch)  # fmt: skip

    start = Setting(concurrency=1, max_size=8, max_delay_ms=5.0, instances=4)
    limits = Limits(max_instances=4, knobs=frozenset({"instances"}))
    search = drive(Search(start, Goal(), limits), shared)
    assert search.chosen is not None and search.chosen.setting.instances == 1


def test_the_delay_is_not_tried_with_one_slot_that_never_waits():
    """With one slot and batch.wait: when_busy a batch never waits for company, so batch.max_delay_ms is not
    tried, and tune says why."""
    search = drive(Search(START, Goal(), Limits(knobs=frozenset({"max_delay_ms"}))), model(20, 1))
    assert {p.setting.max_delay_ms for p in search.points} == {5.0}
    assert any("ever waits for company" in note for note in search.notes)


def test_the_delay_is_tried_around_the_measured_call_time():
    """With two slots, batch.max_delay_ms is tried at 0, half and all of a call's measured time (a call of 8
    inputs: 28 ms), besides the start's 5 ms."""
    start = Setting(concurrency=2, max_size=8, max_delay_ms=5.0)
    search = drive(Search(start, Goal(), Limits(knobs=frozenset({"max_delay_ms"}))), model(20, 1, parallel=2))
    assert {p.setting.max_delay_ms for p in search.points} == {0.0, 5.0, 14.0, 28.0}  # a call of 8: 28 ms


def test_the_search_stays_within_max_points():
    """--max-points 6 caps the points measured at 6, and tune notes that the limit cut the search short."""
    search = drive(Search(START, Goal(), Limits(max_points=6)), model(20, 1, parallel=4))
    assert len(search.points) <= 6
    assert any("--max-points" in note for note in search.notes)


def test_the_pareto_front_holds_the_points_nothing_beats_on_both():
    """The plot's front holds the points no other beats on both throughput and p99; a point with errors is never
    on it, however fast."""

    def point(index: int, throughput: float, p99_ms: float, errors: int = 0) -> Point:
        measure = Measure(throughput, p99_ms / 2e3, p99_ms / 1e3, 10, errors={"timeout": errors} if errors else {})
        return Point(index, Trial(START, 1, "start"), measure, oom=False)

    points = [point(1, 100, 10), point(2, 200, 20), point(3, 150, 30), point(4, 200, 25), point(5, 300, 5, errors=1)]
    assert pareto(points) == {1, 2}
