"""The master's policies (lifecycle.py, refork.py) over a table with no process: each
decision, with a fake clock and fake memory samples."""
import signal

import pytest

from fakes import LOG, Clock, Table, apply, config, kinds, situation
from gunicorn_smartspawn.master import actions
from gunicorn_smartspawn.master.fleet import Role, State
from gunicorn_smartspawn.master.lifecycle import SAMPLES_IN_A_ROW, Lifecycle
from gunicorn_smartspawn.master.refork import LONG_REQUEST, RETRY_DELAYS, Reforker
from gunicorn_smartspawn.spawner.template import GATE_CLOSED
from gunicorn_smartspawn.shared import protocol

MIB = 1024 * 1024
YES, NO = (lambda: True), (lambda: False)  # a refork running, or one that may start


@pytest.fixture
def table(monkeypatch):
    return Table(monkeypatch)


def lifecycle(table, clock=None, measure=None, **cfg):
    return Lifecycle(config(**cfg), LOG, table.fleet, clock or Clock(),
                     measure or (lambda pid: None))


def decide(policy, table, *args):
    return apply(table.fleet, policy.decide(*args))


# -- the lifecycle ----------------------------------------------------------------------

def test_max_requests_makes_a_worker_outgoing_and_stops_it_once_others_serve(table):
    policy = lifecycle(table)
    old, other = table.spawn(), table.spawn()
    table.fleet.counters.set(old.slot, "retire", 1)
    decisions = decide(policy, table, situation(), NO, NO)
    assert kinds(decisions) == ["Replace"] and old.outgoing
    # One serving worker for two wanted: not stopped yet.
    assert decide(policy, table, situation(), NO, NO) == []
    table.spawn(booted=False)
    assert decide(policy, table, situation(), NO, NO) == []  # not booted yet
    table.fleet.get(table.next_pid).worker.beat()
    decisions = decide(policy, table, situation(), NO, NO)
    assert decisions == [actions.Stop(old, signal.SIGTERM)] and old.state is State.STOPPING
    assert other.state is State.SERVING


def test_no_retire_request_is_taken_during_a_refork(table):
    policy = lifecycle(table)
    record = table.spawn()
    table.fleet.counters.set(record.slot, "retire", 1)
    assert decide(policy, table, situation(), YES, NO) == []


def test_memory_limit_needs_samples_in_a_row(table):
    clock, usage = Clock(), {}
    policy = lifecycle(table, clock, lambda pid: (usage[pid], usage[pid] * 2),
                       max_worker_memory=100 * MIB)
    fat, thin = table.spawn(), table.spawn()
    usage.update({fat.pid: 50 * MIB, thin.pid: 50 * MIB})  # both born below the limit
    assert decide(policy, table, situation(), NO, NO) == []
    clock.advance(1.0)
    usage[fat.pid] = 150 * MIB
    for sample in range(SAMPLES_IN_A_ROW):
        assert not fat.outgoing, sample
        decisions = decide(policy, table, situation(), NO, NO)
        assert decisions == [] or sample == SAMPLES_IN_A_ROW - 1
        clock.advance(1.0)
    assert fat.outgoing and not thin.outgoing
    assert policy.stats["replaced_max_worker_memory"] == 0  # the arbiter counts it


def test_a_sample_below_the_limit_breaks_the_row(table):
    clock, usage = Clock(), {}
    policy = lifecycle(table, clock, lambda pid: (usage[pid], usage[pid]),
                       max_worker_memory=100 * MIB)
    record = table.spawn()
    for value in (50, 150, 150, 50, 150, 150):
        usage[record.pid] = value * MIB
        decide(policy, table, situation(), NO, NO)
        clock.advance(1.0)
    assert not record.outgoing


def test_a_worker_above_the_limit_before_its_first_request_is_not_replaced(table, caplog):
    """Its replacement would be as large and be replaced in turn, forever (a limit set
    below what the app needs, or "10%" of a small container): a warning, once."""
    clock, usage = Clock(), {}
    policy = lifecycle(table, clock, lambda pid: (usage[pid], usage[pid]),
                       max_worker_memory=2 * MIB)
    workers = [table.spawn(), table.spawn()]
    usage.update({r.pid: 4 * MIB for r in workers})
    with caplog.at_level("WARNING", logger=LOG.name):
        for _ in range(3 * SAMPLES_IN_A_ROW):
            assert decide(policy, table, situation(), NO, NO) == []
            clock.advance(1.0)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("max_worker_memory = 2.0 MiB is below what a new worker "
                                  "holds: worker (pid: %d) had 4.0 MiB" % workers[0].pid)
    assert not any(r.outgoing for r in workers)
    # One that served before it was sampled above the limit is replaced as usual.
    grown = table.spawn()
    table.fleet.counters.set(grown.slot, "requests", 5)
    usage[grown.pid] = 4 * MIB
    for _ in range(SAMPLES_IN_A_ROW):
        decide(policy, table, situation(), NO, NO)
        clock.advance(1.0)
    assert grown.outgoing and not any(r.outgoing for r in workers)


def test_memory_growth_asks_for_a_refork_only_when_one_may_start(table):
    clock, usage = Clock(), {}
    policy = lifecycle(table, clock, lambda pid: (usage[pid], 200 * MIB),
                       refork_on_memory=True, refork_memory_growth=0.1)
    workers = [table.spawn(), table.spawn()]

    def sample(uss_mib, refork_ready):
        usage.update({r.pid: uss_mib * MIB for r in workers})
        clock.advance(1.0)
        return kinds(decide(policy, table, situation(), NO, lambda: refork_ready))

    assert sample(100, True) == []  # the baseline: 100 of 200 shared
    for _ in range(SAMPLES_IN_A_ROW):
        assert sample(150, False) == []  # grew by 50 > 10 MiB, but no refork may start
    assert sample(150, True) == ["StartRefork"]


def test_an_idle_preloader_is_retired_after_its_timeout(table):
    clock = Clock()
    policy = lifecycle(table, clock, preloader_idle_timeout=60)
    table.preloader.last_used = clock()
    clock.advance(59)
    assert decide(policy, table, situation(), NO, NO) == []
    clock.advance(2)
    assert decide(policy, table, situation(), NO, NO) == [actions.Retire(table.preloader)]
    assert table.fleet.preloader is None


def test_workers_that_never_serve_make_spawns_wait_longer(table):
    clock = Clock()
    policy = lifecycle(table, clock)
    for expected_wait in (0, 0, 0, 0, 1, 2, 4, 8, 10, 10):
        record = table.spawn(booted=False)
        table.fleet.note_booted()
        table.reap(record)
        policy.count_boot_failures(table.fleet.release_departed(), halting=False)
        assert policy.may_spawn() is (expected_wait == 0)
        clock.advance(expected_wait)
        assert policy.may_spawn()
    # A worker stopped on purpose before it served did not fail; one that serves resets.
    record = table.spawn(booted=False)
    table.fleet.told_to_stop(record.pid)
    table.reap(record)
    policy.count_boot_failures(table.fleet.release_departed(), halting=False)
    assert policy.boot_failures.failures == 10
    table.spawn()
    decide(policy, table, situation(), NO, NO)
    assert policy.boot_failures.failures == 0


def test_a_template_whose_workers_keep_failing_is_abandoned(table):
    policy = lifecycle(table)
    template = table.spawn()
    table.fleet.make_candidate(template)
    table.fleet.template_ready(template)
    table.fleet.set_template(template)
    for _ in range(3):
        record = table.spawn(booted=False, spawner=template)
        table.reap(record)
        policy.count_boot_failures(table.fleet.release_departed(), halting=False)
    decisions = decide(policy, table, situation(), NO, NO)
    assert kinds(decisions) == ["AbandonTemplate"] and table.fleet.template is None


# -- the reforker -------------------------------------------------------------------------

def reforker(table, clock=None, **cfg):
    return Reforker(config(**cfg), LOG, table.fleet, 2, clock or Clock())


def test_a_threshold_starts_a_refork_from_the_oldest_booted_worker(table):
    policy = reforker(table, fork_worker=[10])
    oldest, _other = table.spawn(), table.spawn()
    assert decide(policy, table, situation()) == []
    table.fleet.counters.set(oldest.slot, "requests", 10)
    decisions = decide(policy, table, situation())
    assert decisions == [actions.BeginRefork(oldest)] and oldest.state is State.CANDIDATE
    assert policy.extra_workers() == 1  # its stand-in, one over `workers`


def test_the_candidate_is_told_once_a_stand_in_serves_then_old_workers_go_one_by_one(table):
    policy = reforker(table, fork_worker=[10])
    candidate, old = table.spawn(), table.spawn()
    table.fleet.counters.set(candidate.slot, "requests", 10)
    decide(policy, table, situation())
    assert decide(policy, table, situation()) == []  # no stand-in yet
    stand_in = table.spawn()
    assert decide(policy, table, situation()) == [actions.TellCandidate(candidate, 2)]
    assert decide(policy, table, situation()) == []  # told once
    table.fleet.template_ready(candidate)
    decisions = apply(table.fleet, policy.template_ready(candidate, 0.1))
    assert decisions == [actions.NewTemplate(candidate, 2)]
    assert table.fleet.template is candidate and policy.extra_workers() == 0
    # The old workers (old, stand_in: both older than the template's children) go one by
    # one, each once the workers wanted serve.
    decisions = decide(policy, table, situation(generation=2))
    assert kinds(decisions) == ["Replace"] and decisions[0].record is old
    assert decide(policy, table, situation(generation=2)) == []  # old still runs
    table.fleet.told_to_stop(old.pid)
    table.reap(old)
    table.fleet.release_departed()
    table.spawn(spawner=candidate)
    decisions = decide(policy, table, situation(generation=2))
    assert kinds(decisions) == ["Replace"] and decisions[0].record is stand_in
    table.reap(stand_in)
    table.fleet.release_departed()
    table.spawn(spawner=candidate)
    assert decide(policy, table, situation(generation=2)) == []
    assert policy.current is None and policy.done == 1 and policy.threshold_index == 1


def test_a_request_while_busy_is_coalesced_into_one(table):
    policy = reforker(table, fork_worker=True and [10 ** 9])
    table.spawn(), table.spawn()
    busy = situation(preloader_starting=True)
    for _ in range(3):
        assert apply(table.fleet, policy.request("URG", busy)) == []
    assert policy.requested == ("URG", None) and policy.stats()["refork_pending"]
    assert kinds(decide(policy, table, situation())) == ["BeginRefork"]
    assert policy.requested is None


def test_an_unsignalled_candidate_is_given_back_when_the_refork_is_abandoned(table):
    clock = Clock()
    policy = reforker(table, clock, fork_worker=[1], graceful_timeout=5)
    candidate, _other = table.spawn(), table.spawn()
    table.fleet.counters.set(candidate.slot, "requests", 1)
    decide(policy, table, situation())
    clock.advance(16)  # graceful_timeout + 10, and no stand-in ever served
    decisions = decide(policy, table, situation(workers=3))  # no refork may start again
    assert decisions == [actions.GiveBack(candidate)]
    assert candidate.state is State.SERVING and policy.current is None


def in_request(table, record, clock, seconds):
    """`record` (a sync worker) has been serving one request for `seconds`."""
    table.fleet.counters.set(record.slot, "busy_since_us", int((clock() - seconds) * 1e6))


def test_a_told_candidate_that_never_gets_ready_is_abandoned_not_killed(table):
    """What it serves may be a request `timeout` allows; gunicorn's heartbeat check still
    watches it. It is neither stopped nor given back (it was told)."""
    clock = Clock()
    policy = reforker(table, clock, fork_worker=[1], graceful_timeout=5)
    candidate, _other = table.spawn(), table.spawn()
    table.fleet.counters.set(candidate.slot, "requests", 1)
    decide(policy, table, situation())
    table.spawn()
    assert decide(policy, table, situation()) == [actions.TellCandidate(candidate, 2)]
    in_request(table, candidate, clock, 0.5)  # one that came in as it was told
    clock.advance(16)
    decisions = decide(policy, table, situation(workers=3))
    assert kinds(decisions) == ["Replace"] and decisions[0].record is candidate
    assert policy.current is None and candidate.state is State.CANDIDATE
    assert candidate.outgoing and table.signals == []  # not counted toward `workers`
    # Once its request ends it reports ready: retired, not made the template.
    table.fleet.template_ready(candidate)
    assert apply(table.fleet, policy.template_ready(candidate, 0.1)) == [
        actions.Retire(candidate)]
    assert table.fleet.template is None


def test_a_candidate_in_a_long_request_is_not_told_and_keeps_serving(table):
    clock = Clock()
    policy = reforker(table, clock, fork_worker=[1], graceful_timeout=5)
    candidate, _other = table.spawn(), table.spawn()
    table.fleet.counters.set(candidate.slot, "requests", 1)
    decide(policy, table, situation())
    in_request(table, candidate, clock, LONG_REQUEST + 1)
    stand_in = table.spawn()
    for _ in range(15):
        assert decide(policy, table, situation()) == []
        clock.advance(1)
    clock.advance(1)  # graceful_timeout + 10
    decisions = decide(policy, table, situation(workers=3))
    assert kinds(decisions) == ["GiveBack", "Replace"]
    # The stand-in, not the candidate, is the worker over `workers` now.
    assert decisions[0].candidate is candidate and decisions[1].record is stand_in
    assert candidate.state is State.SERVING and stand_in.outgoing and table.signals == []


def test_a_candidate_told_once_its_request_ends(table):
    clock = Clock()
    policy = reforker(table, clock, fork_worker=[1])
    candidate, _other = table.spawn(), table.spawn()
    table.fleet.counters.set(candidate.slot, "requests", 1)
    decide(policy, table, situation())
    in_request(table, candidate, clock, LONG_REQUEST + 1)
    table.spawn()
    assert decide(policy, table, situation()) == []
    table.fleet.counters.set(candidate.slot, "busy_since_us", 0)
    assert decide(policy, table, situation()) == [actions.TellCandidate(candidate, 2)]


def test_a_threshold_prefers_a_worker_past_it_not_in_a_long_request(table):
    clock = Clock()
    policy = reforker(table, clock, fork_worker=[10])
    busy, idle, young = table.spawn(), table.spawn(), table.spawn()
    for record in (busy, idle):
        table.fleet.counters.set(record.slot, "requests", 10)
    in_request(table, busy, clock, LONG_REQUEST + 1)
    assert decide(policy, table, situation(workers=3)) == [actions.BeginRefork(idle)]
    assert young.state is State.SERVING


def test_a_threshold_is_counted_on_worker_0(table):
    policy = reforker(table, Clock(), fork_worker=[10])
    worker_0, other = table.spawn(), table.spawn()
    table.fleet.counters.set(other.slot, "requests", 50)
    table.fleet.counters.set(worker_0.slot, "requests", 9)
    assert decide(policy, table, situation()) == []
    table.fleet.counters.set(worker_0.slot, "requests", 10)
    assert kinds(decide(policy, table, situation())) == ["BeginRefork"]


def test_an_abandoned_refork_waits_longer_after_each_failure_in_a_row(table):
    """A candidate killed as WORKER TIMEOUT (say, a slow pass) abandons the refork: the
    next worker past the threshold is not made the candidate at once."""
    clock = Clock()
    policy = reforker(table, clock, fork_worker=[1])
    workers = [table.spawn(), table.spawn()]
    for delay in RETRY_DELAYS:
        for record in workers:
            table.fleet.counters.set(record.slot, "requests", 1)
        begun = decide(policy, table, situation())
        assert kinds(begun) == ["BeginRefork"], delay
        candidate = begun[0].candidate
        apply(table.fleet, policy.worker_stopping(candidate, signal.SIGABRT))
        table.fleet.told_to_stop(candidate.pid)
        table.reap(candidate)
        table.fleet.release_departed()
        workers = [r for r in workers if r is not candidate] + [table.spawn()]
        assert policy.busy(situation()) == "waiting to retry after an abandoned refork"
        clock.advance(delay - 0.5)
        assert decide(policy, table, situation()) == []
        clock.advance(0.5)
    assert policy.threshold_index == 0  # the threshold is kept


def test_a_refork_done_starts_the_row_of_failures_over(table):
    clock = Clock()
    policy = reforker(table, clock, fork_worker=[10 ** 9])
    table.spawn(), table.spawn()
    apply(table.fleet, policy.request("URG", situation()))
    apply(table.fleet, policy.abort("a test"))
    assert policy.retries.failures == 1
    clock.advance(RETRY_DELAYS[0])
    policy.retries.succeeded()  # what finish() does
    apply(table.fleet, policy.request("URG", situation()))
    assert policy.current is not None
    apply(table.fleet, policy.end_generation())  # a HUP is no failure
    assert policy.retries.failures == 0 and not policy.retries.waiting()


def test_a_template_refused_by_a_fork_gate_is_tried_again_later(table):
    clock = Clock()
    policy = reforker(table, clock, fork_worker=[10 ** 9])
    candidate, _other = table.spawn(), table.spawn()
    apply(table.fleet, policy.request("URG", situation()))
    table.spawn()
    decide(policy, table, situation())  # told
    candidate.failure = protocol.BootFailed(GATE_CLOSED, "a prevent_fork() block")
    assert apply(table.fleet, policy.template_gone(candidate)) == []
    assert policy.current is None and policy.requested == ("URG", None)
    assert policy.busy(situation(workers=3)) == (
        "waiting to retry after a prevent_fork() block")
    clock.advance(RETRY_DELAYS[0])
    assert policy.busy(situation(workers=3)) is None


def test_a_candidate_being_stopped_abandons_the_refork(table):
    policy = reforker(table, fork_worker=[10 ** 9])
    candidate, _other = table.spawn(), table.spawn()
    apply(table.fleet, policy.request("URG", situation()))
    decisions = apply(table.fleet, policy.worker_stopping(candidate, signal.SIGTERM))
    assert decisions == [actions.GiveBack(candidate)] and policy.current is None
    assert candidate.role is Role.WORKER


def test_a_hup_ends_the_generation_and_its_template(table):
    policy = reforker(table, fork_worker=[10, 20])
    template = table.spawn()
    table.fleet.make_candidate(template)
    table.fleet.template_ready(template)
    table.fleet.set_template(template)
    policy.threshold_index = 1
    assert apply(table.fleet, policy.end_generation()) == [actions.Retire(template)]
    assert table.fleet.template is None and policy.threshold_index == 0


def test_no_refork_with_fewer_than_two_workers(table):
    policy = reforker(table, fork_worker=[1])
    table.spawn()
    assert apply(table.fleet, policy.request("URG", situation(workers=1))) == []
    assert policy.requested is None


def test_a_memory_refork_waits_while_the_same_sample_replaces_a_worker(table):
    clock, usage = Clock(), {}
    policy = lifecycle(table, clock, lambda pid: (usage[pid], 400 * MIB),
                       max_worker_memory=120 * MIB, refork_on_memory=True,
                       refork_memory_growth=0.1)
    workers = [table.spawn(), table.spawn()]
    # As the arbiter asks it: no refork may start while a worker is being replaced.
    may_refork = lambda: not table.fleet.outgoing()  # noqa: E731
    for uss in (100, 150, 150, 150):
        usage.update({r.pid: uss * MIB for r in workers})
        decisions = decide(policy, table, situation(), NO, may_refork)
        clock.advance(1.0)
    assert kinds(decisions) == ["Replace", "Replace"]


def test_a_refork_abandoned_while_its_candidate_is_named_goes_no_further(table):
    """What the arbiter does when on_refork raises: it abandons the refork as it carries
    out BeginRefork; the policy then neither logs nor counts a started refork."""
    policy = reforker(table, fork_worker=[10 ** 9])
    candidate, _other = table.spawn(), table.spawn()
    steps = policy.request("URG", situation())
    assert next(steps) == actions.BeginRefork(candidate)
    assert list(policy.abort("on_refork raised RuntimeError()")) == [
        actions.GiveBack(candidate)]
    assert list(steps) == []
    assert policy.current is None and policy.busy(situation()) == (
        "waiting to retry after an abandoned refork")


def test_no_refork_starts_while_an_abandoned_candidate_finishes_its_request(table):
    """A told candidate left finishing its request after an abandoned refork is outgoing:
    a new refork waits until it is gone, and its stand-in is a worker of its own."""
    clock = Clock()
    policy = reforker(table, clock, fork_worker=[10 ** 9], graceful_timeout=5)
    first, second = table.spawn(), table.spawn()
    apply(table.fleet, policy.request("URG", situation()))
    table.spawn()
    assert decide(policy, table, situation()) == [actions.TellCandidate(first, 2)]
    clock.advance(16)
    decide(policy, table, situation(workers=3))  # abandoned; `first` is still a candidate
    clock.advance(RETRY_DELAYS[0])
    assert apply(table.fleet, policy.request("URG", situation())) == []
    assert policy.busy(situation()) == "workers are being replaced"
    table.fleet.template_ready(first)  # its request is over: ready, and retired
    assert apply(table.fleet, policy.template_ready(first, 0.1)) == [actions.Retire(first)]
    assert kinds(decide(policy, table, situation())) == ["BeginRefork"]
    assert policy.current.candidate is second
    assert decide(policy, table, situation()) == []  # its own stand-in: not yet
    table.spawn()
    assert decide(policy, table, situation()) == [actions.TellCandidate(second, 2)]
