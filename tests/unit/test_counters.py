"""counters.py: the per-worker table in shared memory, in this process."""
import pytest

from gunicorn_smartspawn.shared.counters import FIELDS, SLOTS, Counters


def test_slots_are_given_lowest_first_and_each_once():
    counters = Counters(slots=4)
    assert [counters.allocate() for _ in range(4)] == [0, 1, 2, 3]


def test_when_every_slot_is_taken_allocate_returns_none_until_one_is_released():
    counters = Counters(slots=3)
    taken = [counters.allocate() for _ in range(3)]
    assert counters.allocate() is None and counters.allocate() is None
    counters.release(taken[1])
    assert counters.allocate() == taken[1]
    assert counters.allocate() is None


def test_the_default_table_has_slots_for_a_thousand_workers():
    counters = Counters()
    slots = [counters.allocate() for _ in range(SLOTS)]
    assert slots == list(range(SLOTS)) and counters.allocate() is None


def test_a_released_slot_is_zeroed_when_given_again():
    counters = Counters(slots=2)
    slot = counters.allocate()
    for value, field in enumerate(FIELDS, 1):
        counters.set(slot, field, value * 1000)
    counters.release(slot)
    assert counters.allocate() == slot
    assert counters.snapshot(slot) == dict.fromkeys(FIELDS, 0)


def test_release_of_no_slot_does_nothing():
    counters = Counters(slots=1)
    counters.release(None)
    assert counters.allocate() == 0 and counters.allocate() is None


def test_fields_and_slots_are_independent():
    counters = Counters(slots=3)
    a, b = counters.allocate(), counters.allocate()
    counters.set(a, "requests", 7)
    counters.set(b, "requests", 9)
    counters.set(a, "fork_unsafe", 1)
    counters.set(b, "oob_microseconds", 2 ** 64 - 1)  # an unsigned 64-bit store
    assert counters.requests(a) == 7 and counters.requests(b) == 9
    assert counters.get(a, "fork_unsafe") == 1 and counters.get(b, "fork_unsafe") == 0
    assert counters.snapshot(a) == {**dict.fromkeys(FIELDS, 0), "requests": 7,
                                     "fork_unsafe": 1}
    assert counters.snapshot(b) == {**dict.fromkeys(FIELDS, 0), "requests": 9,
                                     "oob_microseconds": 2 ** 64 - 1}


def test_a_worker_without_a_slot_reads_as_zero():
    counters = Counters(slots=1)
    assert counters.get(None, "requests") == 0 and counters.requests(None) == 0
    assert counters.snapshot(None) == dict.fromkeys(FIELDS, 0)


def test_the_snapshot_has_every_field_in_order():
    counters = Counters(slots=1)
    assert list(counters.snapshot(counters.allocate())) == list(FIELDS)
    assert set(FIELDS) >= {"requests", "retire", "fork_unsafe"}


def test_unknown_fields_and_values_out_of_range_are_refused():
    counters = Counters(slots=1)
    slot = counters.allocate()
    with pytest.raises(KeyError):
        counters.get(slot, "nope")
    with pytest.raises(KeyError):
        counters.set(slot, "nope", 1)
    with pytest.raises((ValueError, OverflowError)):
        counters.set(slot, "requests", -1)
    with pytest.raises((ValueError, OverflowError)):
        counters.set(slot, "requests", 2 ** 64)
    with pytest.raises(IndexError):
        counters.set(1, "requests", 1)
    assert counters.requests(slot) == 0
