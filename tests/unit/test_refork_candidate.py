"""refork.choose_candidate: which worker becomes the template, over fake records."""
import types

import pytest

from gunicorn_smartspawn.shared.counters import Counters
from gunicorn_smartspawn.master.fleet import State
from gunicorn_smartspawn.master.refork import LONG_REQUEST, choose_candidate

NOW = 5000.0  # time.monotonic(), as the master reads it


@pytest.fixture
def counters():
    return Counters(slots=16)


def record(counters, age, state=State.SERVING, channel=True, booted=True, fork_unsafe=False,
           slot=True):
    """What choose_candidate reads of a worker's record."""
    slot = counters.allocate() if slot else None
    if fork_unsafe:
        counters.set(slot, "fork_unsafe", 1)
    return types.SimpleNamespace(
        worker=types.SimpleNamespace(age=age), state=state, slot=slot,
        channel=object() if channel else None, heartbeat_moved=lambda: booted)


def test_the_oldest_eligible_worker_is_chosen_whatever_the_order(counters):
    records = [record(counters, age) for age in (5, 2, 9, 3)]
    assert choose_candidate(records, counters, NOW) is records[1]
    assert choose_candidate(list(reversed(records)), counters, NOW) is records[1]


def test_an_outgoing_worker_may_become_the_template(counters):
    records = [record(counters, 1, state=State.OUTGOING), record(counters, 2)]
    assert choose_candidate(records, counters, NOW) is records[0]


@pytest.mark.parametrize("why_not", [
    {"state": State.STOPPING}, {"state": State.CANDIDATE}, {"state": State.QUEUED},
    {"state": State.SENT}, {"channel": False}, {"booted": False}, {"fork_unsafe": True},
], ids=lambda kw: "-".join("%s=%s" % item for item in kw.items()))
def test_an_ineligible_older_worker_is_passed_over(counters, why_not):
    older, younger = record(counters, 1, **why_not), record(counters, 2)
    assert choose_candidate([older, younger], counters, NOW) is younger
    assert choose_candidate([older], counters, NOW) is None


def test_a_worker_without_a_counter_slot_is_fork_safe_as_far_as_is_known(counters):
    records = [record(counters, 1, slot=False), record(counters, 2)]
    assert choose_candidate(records, counters, NOW) is records[0]


def test_no_worker_no_candidate(counters):
    assert choose_candidate([], counters, NOW) is None


def test_fork_unsafe_is_read_at_each_choice(counters):
    first, second = record(counters, 1), record(counters, 2)
    assert choose_candidate([first, second], counters, NOW) is first
    counters.set(first.slot, "fork_unsafe", 1)
    assert choose_candidate([first, second], counters, NOW) is second


def in_request_for(counters, record_, seconds):
    counters.set(record_.slot, "busy_since_us", int((NOW - seconds) * 1e6))


def test_a_worker_in_a_long_request_is_passed_over_for_one_that_is_not(counters):
    oldest, younger = record(counters, 1), record(counters, 2)
    in_request_for(counters, oldest, LONG_REQUEST + 0.5)
    assert choose_candidate([oldest, younger], counters, NOW) is younger


def test_an_idle_worker_is_preferred_to_one_in_a_short_request(counters):
    oldest, younger = record(counters, 1), record(counters, 2)
    in_request_for(counters, oldest, 0)  # one that began just now
    assert choose_candidate([oldest, younger], counters, NOW) is younger


def test_a_short_request_is_preferred_to_a_long_one(counters):
    oldest, younger = record(counters, 1), record(counters, 2)
    in_request_for(counters, oldest, LONG_REQUEST + 0.5)
    in_request_for(counters, younger, LONG_REQUEST / 2)
    assert choose_candidate([oldest, younger], counters, NOW) is younger
    in_request_for(counters, oldest, LONG_REQUEST / 4)
    assert choose_candidate([oldest, younger], counters, NOW) is oldest


def test_when_every_worker_is_in_a_long_request_the_oldest_is_chosen(counters):
    records = [record(counters, age) for age in (1, 2)]
    for r in records:
        in_request_for(counters, r, LONG_REQUEST + 5)
    assert choose_candidate(records, counters, NOW) is records[0]


def test_a_threshold_chooses_among_the_workers_past_it(counters):
    oldest, younger = record(counters, 1), record(counters, 2)
    counters.set(younger.slot, "requests", 10)
    assert choose_candidate([oldest, younger], counters, NOW, min_requests=10) is younger
    assert choose_candidate([oldest, younger], counters, NOW, min_requests=11) is None


def test_a_finished_request_leaves_the_worker_idle(counters):
    oldest, younger = record(counters, 1), record(counters, 2)
    in_request_for(counters, oldest, LONG_REQUEST + 0.5)
    in_request_for(counters, younger, 0)
    # busy_since_us stays where the request began; last_request_us past it: finished.
    counters.set(oldest.slot, "last_request_us", int((NOW - 0.1) * 1e6))
    assert choose_candidate([oldest, younger], counters, NOW) is oldest


def test_a_worker_in_out_of_band_work_is_busy(counters):
    oldest, younger = record(counters, 1), record(counters, 2)
    counters.set(oldest.slot, "oob_since_us", int((NOW - LONG_REQUEST - 0.5) * 1e6))
    assert choose_candidate([oldest, younger], counters, NOW) is younger
