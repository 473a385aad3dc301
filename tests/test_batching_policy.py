"""servd.core.batching: the pure policy of when a batch runs, how big it is, and what ETA a rank gets.

No clock or loop here: every time is a plain number passed in, so each rule is checked exactly.
"""

from __future__ import annotations

import pytest

from servd.core.batching import RunNow, WaitUntil, decide, eta, lowered_batch_size

# -- decide --------------------------------------------------------------------------------


def test_nothing_waiting_means_nothing_to_do():
    """With an empty queue a free slot does nothing and arms no timer."""
    assert decide(waiting=0, max_size=8, oldest_admitted_at=100.0, max_delay_s=0.005, now=100.0) is None


def test_a_full_batch_runs_at_once():
    """As many waiting as max_size: run them now, however young the oldest is."""
    assert decide(waiting=8, max_size=8, oldest_admitted_at=100.0, max_delay_s=1.0, now=100.0) == RunNow(8)


def test_more_than_a_full_batch_runs_max_size():
    """The rest stay queued for the next free slot."""
    assert decide(waiting=20, max_size=8, oldest_admitted_at=100.0, max_delay_s=1.0, now=100.0) == RunNow(8)


def test_a_partial_batch_waits_until_the_oldest_has_waited_max_delay():
    """Fewer than max_size: wait for more, until oldest admission + max_delay, not now + max_delay."""
    decision = decide(waiting=3, max_size=8, oldest_admitted_at=100.0, max_delay_s=0.5, now=100.2)
    assert decision == WaitUntil(100.5)


def test_a_partial_batch_runs_once_the_delay_has_passed():
    """At oldest + max_delay the partial batch runs with everything waiting."""
    assert decide(waiting=3, max_size=8, oldest_admitted_at=100.0, max_delay_s=0.5, now=100.5) == RunNow(3)


def test_a_partial_batch_runs_when_the_delay_is_long_past():
    """A request that already waited past the delay (all slots were busy) is not held again."""
    assert decide(waiting=1, max_size=8, oldest_admitted_at=100.0, max_delay_s=0.005, now=250.0) == RunNow(1)


def test_zero_max_delay_runs_a_partial_batch_at_once():
    """max_delay_ms: 0 never holds a request back for a fuller batch."""
    assert decide(waiting=1, max_size=8, oldest_admitted_at=100.0, max_delay_s=0.0, now=100.0) == RunNow(1)


def test_a_batch_size_of_one_always_runs_at_once():
    """max_size 1 is full with one request, whatever the delay."""
    assert decide(waiting=1, max_size=1, oldest_admitted_at=100.0, max_delay_s=60.0, now=100.0) == RunNow(1)


# -- lowered_batch_size --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("current", "failed", "expected"),
    [
        (32, 32, 16),  # a full batch ran out of memory: halve it
        (32, 10, 5),  # a partial batch failed: half of what actually failed
        (4, 16, 4),  # never raised by a failure of a larger (older) batch
        (8, 1, 1),  # at least one
        (1, 1, 1),
        (8, 3, 1),
    ],
)
def test_an_oom_lowers_the_batch_size_to_half_of_what_failed(current, failed, expected):
    """After an out-of-memory error the working batch size is half the failed batch, at most the current."""
    assert lowered_batch_size(current, failed) == expected


# -- eta -----------------------------------------------------------------------------------


def test_no_eta_before_any_batch_was_timed():
    """Without a measured batch time there is nothing to estimate from."""
    assert eta(rank=0, batch_size=1, slot_remaining_s=[0.0], batch_time_s=None) is None


def test_no_eta_without_slots():
    """An endpoint with no live worker slot (models not loaded) gives no ETA."""
    assert eta(rank=0, batch_size=1, slot_remaining_s=[], batch_time_s=1.0) is None


def test_one_free_slot_eta_is_one_batch_per_rank():
    """One free slot, batches of one: rank r completes after r + 1 batch times."""
    assert [eta(r, 1, [0.0], 2.0) for r in range(4)] == [2.0, 4.0, 6.0, 8.0]


def test_one_busy_slot_adds_its_remaining_time():
    """A busy slot first finishes its current call."""
    assert [eta(r, 1, [0.5], 2.0) for r in range(3)] == [2.5, 4.5, 6.5]


def test_batches_group_ranks():
    """Batch size 4: ranks 0-3 share the first batch, 4-7 the second."""
    assert [eta(r, 4, [0.0], 1.0) for r in range(9)] == [1.0] * 4 + [2.0] * 4 + [3.0]


def test_several_free_slots_run_batches_side_by_side():
    """Three free slots: the first three ranks finish together, the next three one batch later."""
    assert [eta(r, 1, [0.0, 0.0, 0.0], 1.0) for r in range(7)] == [1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 3.0]


def test_several_busy_slots_take_batches_in_order_of_freeing():
    """Slots free after 0.2, 0.5 and 0.9 s: batch j goes to slot j mod 3, one round per three batches."""
    slots = [0.2, 0.5, 0.9]
    assert [eta(r, 1, slots, 1.0) for r in range(6)] == pytest.approx([1.2, 1.5, 1.9, 2.2, 2.5, 2.9])


def test_slots_and_batches_together():
    """Two slots, batches of 2: ranks pair up, pairs alternate slots."""
    slots = [0.0, 0.25]
    assert [eta(r, 2, slots, 1.0) for r in range(8)] == pytest.approx([1.0, 1.0, 1.25, 1.25, 2.0, 2.0, 2.25, 2.25])


def test_eta_never_decreases_with_rank():
    """A later place in the queue never gets an earlier ETA (slot times within one batch time)."""
    slots = [0.0, 0.3, 0.7, 1.0]
    etas = [eta(r, 3, slots, 1.0) for r in range(50)]
    assert None not in etas
    assert etas == sorted(etas)


def test_a_zero_batch_size_is_treated_as_one():
    """A batch size of 0 (never configured, but guarded) does not divide by zero."""
    assert eta(rank=2, batch_size=0, slot_remaining_s=[0.0], batch_time_s=1.0) == 3.0
