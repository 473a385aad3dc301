"""The schedule of one endpoint's waiting requests (servd/core/queue.py, issue 12), without a loop.

RequestQueue keeps priority levels (1 first) and, within a level, fifo or fair (clients
round-robin) order. The schedule it shows (iteration, `rank_if_pushed`, the rank `push` returns)
must be the order `pop` really takes requests in: admission by predicted wait and every rank a
client is told rest on it. Example tests pin the rules; hypothesis drives random sequences of
push, pop, remove and reconfigure against the invariants.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from servd.config.spec import QueueSpec
from servd.core.events import Terminal
from servd.core.queue import FairLevel, FifoLevel, RequestQueue
from servd.core.request import Request
from servd.errors import ErrorCode, ServdError


class NoSink:
    def send(self, request: Request, message: str) -> None:
        raise AssertionError("the queue sends nothing")

    def end(self, request: Request, terminal: Terminal) -> None:
        raise AssertionError("the queue ends nothing")


def req(id: str, client: str = "a", priority: int = 1, admitted_at: float = 0.0) -> Request:
    return Request(id, client, None, NoSink(), priority=priority, admitted_at=admitted_at)


def ids(requests) -> list[str]:
    return [r.id for r in requests]


def queue(order: str = "fifo", levels: int = 1, **limits) -> RequestQueue:
    return RequestQueue(QueueSpec(priority_levels=levels, order=order, **limits))


def push_all(q: RequestQueue, *specs: str) -> list[int]:
    """Push requests written "id:client:priority" (client and priority optional); their ranks."""
    ranks = []
    for spec in specs:
        id, client, priority = ([*spec.split(":"), "", ""])[:3]
        ranks.append(q.push(req(id, client or "a", int(priority or 1))))
    return ranks


# -- levels and fifo ------------------------------------------------------------------------


def test_fifo_runs_each_level_in_arrival_order_and_level_1_first():
    """fifo: every level-1 request before any level-2 one, each level in arrival order."""
    q = queue("fifo", 3)
    push_all(q, "x3::3", "y2::2", "z1::1", "w3::3", "v1::1", "u2::2")
    assert ids(q) == ["z1", "v1", "y2", "u2", "x3", "w3"]
    assert ids(q.pop(6)) == ["z1", "v1", "y2", "u2", "x3", "w3"]


def test_a_higher_level_arrival_gets_the_rank_after_its_own_level_and_pushes_lower_ones_back():
    """A level-1 request arriving behind four level-2 ones gets rank 1 (behind the earlier level-1
    one), and the level-2 ones each move back one place."""
    q = queue("fifo", 2)
    assert push_all(q, "h1::1", "l1::2", "l2::2", "l3::2", "l4::2") == [0, 1, 2, 3, 4]
    assert q.rank_if_pushed("b", 1) == 1
    assert q.push(req("h2", "b", 1)) == 1
    assert ids(q) == ["h1", "h2", "l1", "l2", "l3", "l4"]
    assert q.pushes_back_others(1) is True
    assert q.pushes_back_others(2) is False  # nothing waits below level 2


def test_pop_takes_a_batch_across_levels_in_schedule_order():
    """pop(count) takes the next `count` of the schedule, crossing from one level into the next."""
    q = queue("fifo", 3)
    push_all(q, "c::3", "b1::2", "a::1", "b2::2")
    assert ids(q.pop(3)) == ["a", "b1", "b2"]
    assert ids(q.pop(3)) == ["c"]
    assert q.pop(3) == []
    assert len(q) == 0 and not q


def test_depth_by_level_counts_what_waits_at_each_level():
    """depth_by_level names every level "1".."N", and its counts add up to the queue's length."""
    q = queue("fair", 3)
    push_all(q, "a::1", "b::3", "c:b:3", "d:c:3")
    assert q.depth_by_level() == {"1": 1, "2": 0, "3": 3}
    q.pop(2)
    assert q.depth_by_level() == {"1": 0, "2": 0, "3": 2}


def test_remove_takes_out_only_a_waiting_request():
    """remove() is True for a waiting request (once), False for one already popped or never pushed."""
    q = queue("fifo", 2)
    a, b, c = req("a"), req("b", priority=2), req("c")
    for r in (a, b, c):
        q.push(r)
    assert q.remove(b) is True
    assert q.remove(b) is False
    assert q.pop(1) == [a]
    assert q.remove(a) is False
    assert q.remove(req("never")) is False
    assert ids(q) == ["c"] and len(q) == 1


# -- fair order -----------------------------------------------------------------------------


def test_fair_newcomer_behind_a_burst_has_rank_1():
    """fair: behind one client's 2,000 waiting requests a second client's request has rank 1 and
    runs second; under fifo it would have rank 2,000."""
    fair, fifo = queue("fair"), queue("fifo")
    for q in (fair, fifo):
        for i in range(2000):
            q.push(req(f"burst{i}", "flood"))
    assert fair.push(req("polite", "b")) == 1
    assert fifo.push(req("polite", "b")) == 2000
    assert ids(fair.pop(3)) == ["burst0", "polite", "burst1"]


def test_fair_serves_clients_round_robin_each_in_arrival_order():
    """fair: one request of each client a round, each client's requests in the order they came."""
    q = queue("fair")
    push_all(q, "a1:a", "a2:a", "a3:a", "b1:b", "c1:c", "b2:b")
    assert ids(q) == ["a1", "b1", "c1", "a2", "b2", "a3"]
    assert ids(q.pop(6)) == ["a1", "b1", "c1", "a2", "b2", "a3"]


def test_fair_served_client_goes_to_the_back_and_a_newcomer_joins_behind_it():
    """fair: a client just served goes to the back of the round; a new client joins at the back,
    behind it."""
    q = queue("fair")
    push_all(q, "a1:a", "a2:a", "b1:b", "b2:b")
    assert ids(q.pop(1)) == ["a1"]  # round is now b, a
    assert q.push(req("c1", "c")) == 2
    assert ids(q) == ["b1", "a2", "c1", "b2"]


def test_fair_rank_if_pushed_for_a_client_already_waiting():
    """fair: a client with d requests waiting gets its next one in round d: behind d+1 requests of each
    client before it in the round (as far as they have them), d of each after it."""
    level = FairLevel()
    for spec in ("a1:a", "b1:b", "b2:b", "b3:b", "c1:c", "c2:c", "c3:c"):
        id, client = spec.split(":")
        level.push(req(id, client))
    assert level.rank_if_pushed("b") == 1 + 3 + 3  # a: 1 (all it has), b: its 3, c: 3 (rounds 0-2)
    assert level.rank_if_pushed("a") == 3  # round 1, where a comes first: behind round 0 only
    assert level.rank_if_pushed("d") == 3
    assert FifoLevel().rank_if_pushed("anyone") == 0


def test_per_client_count_is_kept_through_pop_and_remove():
    """queue.max_per_client counts what a client has waiting: it is refused at the limit, and admitted
    again once one of its requests has left (popped or removed)."""
    q = queue("fair", max_per_client=2, max_size=3)
    a1, a2 = req("a1", "a"), req("a2", "a")
    q.push(a1)
    q.push(a2)
    with pytest.raises(ServdError) as refused:
        q.check_room("a")
    assert refused.value.code is ErrorCode.CLIENT_LIMIT
    assert "queue.max_per_client=2" in refused.value.message
    q.check_room("b")
    q.push(req("b1", "b"))
    with pytest.raises(ServdError) as full:
        q.check_room("c")
    assert full.value.code is ErrorCode.QUEUE_FULL
    assert q.remove(a2)
    q.check_room("a")
    q.pop(1)
    q.check_room("c")


def test_oldest_admitted_at_spans_levels():
    """oldest_admitted_at is the earliest admission among everything waiting, whatever its level."""
    q = queue("fair", 2)
    q.push(req("late-high", "a", 1, admitted_at=5.0))
    q.push(req("early-low", "b", 2, admitted_at=1.0))
    q.push(req("mid-low", "c", 2, admitted_at=3.0))
    assert q.oldest_admitted_at() == 1.0
    q.remove(next(r for r in q if r.id == "early-low"))
    assert q.oldest_admitted_at() == 3.0


# -- reconfigure ----------------------------------------------------------------------------


def test_reconfigure_fifo_to_fair_resorts_by_client():
    """A reload from fifo to fair re-sorts what waits: one client's earlier burst no longer keeps a
    later client's request behind it."""
    q = queue("fifo")
    push_all(q, "a1:a", "a2:a", "a3:a", "b1:b")
    q.reconfigure(QueueSpec(order="fair"))
    assert ids(q) == ["a1", "b1", "a2", "a3"]
    assert len(q) == 4


def test_reconfigure_fewer_levels_joins_the_dropped_ones_to_the_lowest():
    """Levels past the new lowest join it, behind what already waited there, and their requests
    carry the new level (so remove and pop still find them)."""
    q = queue("fifo", 3)
    push_all(q, "c:a:3", "b:a:2", "a:a:1")
    q.reconfigure(QueueSpec(order="fifo", priority_levels=2))
    assert ids(q) == ["a", "b", "c"]
    assert q.depth_by_level() == {"1": 1, "2": 2}
    c = next(r for r in q if r.id == "c")
    assert c.priority == 2
    assert q.remove(c) is True
    assert ids(q.pop(5)) == ["a", "b"]


def test_reconfigure_of_other_limits_keeps_the_schedule():
    """A reload that changes neither order nor levels (only max_size, say) leaves the fair round as
    it was, served clients at the back included."""
    q = queue("fair")
    push_all(q, "a1:a", "a2:a", "b1:b", "b2:b")
    q.pop(1)
    before = ids(q)
    q.reconfigure(QueueSpec(order="fair", max_size=10))
    assert ids(q) == before == ["b1", "a2", "b2"]
    assert q.limits.max_size == 10


@pytest.mark.parametrize("resort", ["fair to fifo", "two fifo levels to one fair"])
def test_oldest_admitted_at_is_the_earliest_after_a_resort(resort):
    """A reload that changes order or levels re-sorts what waits by arrival, so oldest_admitted_at
    (batch.max_delay_ms counts from it) is still the earliest admission. Found by these tests:
    re-pushing in the old schedule's order put younger requests at heads."""
    if resort == "fair to fifo":
        q = queue("fair")
        q.push(req("a1", "a", admitted_at=0.0))
        q.push(req("a2", "a", admitted_at=1.0))
        q.push(req("b1", "b", admitted_at=2.0))
        q.pop(1)
        assert ids(q) == ["b1", "a2"]  # a was served: to the back of the round
        q.reconfigure(QueueSpec(order="fifo"))
        assert ids(q) == ["a2", "b1"], "fifo means arrival order"
    else:
        q = queue("fifo", 2)
        q.push(req("old-low", "a", 2, admitted_at=1.0))
        q.push(req("young-high", "a", 1, admitted_at=2.0))
        q.reconfigure(QueueSpec(order="fair", priority_levels=1))
        assert ids(q) == ["old-low", "young-high"], "merged levels wait in arrival order"
    assert q.oldest_admitted_at() == 1.0


# -- random sequences -----------------------------------------------------------------------

CLIENTS = ("a", "b", "c", "d")
operation = st.one_of(
    st.tuples(st.just("push"), st.sampled_from(CLIENTS), st.integers(1, 3)),
    st.tuples(st.just("pop"), st.integers(1, 4)),
    st.tuples(st.just("remove"), st.integers(0, 1000)),
    st.tuples(st.just("reconfigure"), st.sampled_from(("fifo", "fair")), st.integers(1, 3)),
)


class Model:
    """What the invariants need to remember: each waiting request's arrival key (a re-sort keeps
    arrival order)."""

    def __init__(self) -> None:
        self.key: dict[str, int] = {}
        self.next_key = 0

    def arrive(self, request: Request) -> None:
        self.key[request.id] = self.next_key
        self.next_key += 1


def check_invariants(q: RequestQueue, model: Model) -> None:
    schedule = list(q)
    assert len(q) == len(schedule) == len(model.key)
    assert {r.id for r in schedule} == set(model.key)
    levels = [r.priority for r in schedule]
    assert levels == sorted(levels), "a lower level is scheduled before a higher one"
    assert all(1 <= p <= q.limits.priority_levels for p in levels)
    assert q.depth_by_level() == {str(i): levels.count(i) for i in range(1, q.limits.priority_levels + 1)}
    if schedule:
        assert q.oldest_admitted_at() == min(r.admitted_at for r in schedule)
    for level in set(levels):
        at_level = [r for r in schedule if r.priority == level]
        for client in CLIENTS:
            keys = [model.key[r.id] for r in at_level if r.client == client]
            assert keys == sorted(keys), f"client {client}'s requests out of order at level {level}"
        if q.limits.order == "fifo":
            keys = [model.key[r.id] for r in at_level]
            assert keys == sorted(keys), f"level {level} is not in arrival order"
        else:
            check_round_robin([r.client for r in at_level])
    waiting = Counter(r.client for r in schedule)
    for client in CLIENTS:
        if waiting[client] >= 3:
            with pytest.raises(ServdError):
                q.check_room(client)
        else:
            q.check_room(client)


def check_round_robin(clients: list[str]) -> None:
    """In every prefix of a fair level's schedule, two clients that both have requests left after it
    have been served within one request of each other."""
    total = Counter(clients)
    served: Counter[str] = Counter()
    for client in clients:
        served[client] += 1
        left = [c for c in total if total[c] > served[c]]
        for x, y in pairwise(left):
            assert abs(served[x] - served[y]) <= 1, (clients, dict(served))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(("fifo", "fair")), st.integers(1, 3), st.lists(operation, max_size=60))
def test_random_sequences_keep_the_schedule_honest(order, levels, operations):
    """For any sequence of push, pop, remove and reconfigure: push returns the rank rank_if_pushed
    promised, which is the request's place in the schedule, and inserting it moves nobody else out
    of order; pop takes exactly the head of the schedule; fifo remove leaves the rest in order; a
    reconfigure keeps every request exactly once; levels, per-client order, round-robin fairness,
    depths and per-client counts hold throughout."""
    q = queue(order, levels, max_per_client=3)
    model = Model()
    for number, op in enumerate(operations):
        before = list(q)
        if op[0] == "push":
            _, client, priority = op
            priority = min(priority, q.limits.priority_levels)
            try:
                q.check_room(client)
            except ServdError:
                continue
            request = req(f"r{number}", client, priority, admitted_at=float(number))
            promised = q.rank_if_pushed(client, priority)
            model.arrive(request)
            assert q.push(request) == promised
            assert list(q) == [*before[:promised], request, *before[promised:]]
        elif op[0] == "pop":
            taken = q.pop(op[1])
            assert taken == before[: op[1]]
            assert list(q) == before[op[1] :]
            for request in taken:
                del model.key[request.id]
        elif op[0] == "remove":
            if not before:
                assert q.remove(req("nobody")) is False
                continue
            victim = before[op[1] % len(before)]
            assert q.remove(victim) is True
            assert q.remove(victim) is False
            del model.key[victim.id]
            if q.limits.order == "fifo":
                assert list(q) == [r for r in before if r is not victim]
        else:
            _, new_order, new_levels = op
            old = q.limits
            fits = all(r.priority <= new_levels for r in before)  # read before reconfigure clips them
            q.reconfigure(dataclasses.replace(old, order=new_order, priority_levels=new_levels))
            after = list(q)
            assert sorted(ids(after)) == sorted(ids(before))
            if fits and new_order == old.order == "fifo":
                assert after == before, "a re-sort that had nothing to change reordered the queue"
        check_invariants(q, model)
    schedule = list(q)
    assert q.drain() == schedule
    assert len(q) == 0 and q.depth_by_level() == {str(i): 0 for i in range(1, q.limits.priority_levels + 1)}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(CLIENTS), min_size=1, max_size=40), st.integers(0, 40))
def test_fair_schedule_is_the_pop_order(arrivals, pops_first):
    """fair: after any arrivals and pops, popping one at a time takes the requests in exactly the order
    the schedule (iteration) showed, and a newcomer's rank is the number of clients waiting."""
    q = queue("fair")
    for i, client in enumerate(arrivals):
        q.push(req(f"r{i}", client))
    q.pop(pops_first)
    assert q.rank_if_pushed("newcomer", 1) == len({r.client for r in q})
    shown = list(q)
    popped = [q.pop(1)[0] for _ in range(len(q))]
    assert popped == shown
