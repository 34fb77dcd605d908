"""Refork policy and sequence, as the master sees them (fork_worker).

A refork: a booted worker (the candidate) that the application did not mark with
no_longer_fork_safe() is to become the template, an idle one first (choose_candidate).
Spawn before retire: first a stand-in is spawned, one worker over `workers`, so that
capacity does not drop while the candidate leaves service; once it serves, and the
candidate is not in a long request, the candidate gets BecomeTemplate + SIGURG, finishes
its requests and reports ready as a template; the master then replaces every older
worker, one at a time (lifecycle.py): an old worker is stopped only once its replacement
and every other new worker is serving. Triggers: `fork_worker` thresholds, URG, the
control socket's `refork`, and `refork_on_memory` (lifecycle.py).

A refork past its deadline is abandoned, never by killing the candidate: a request it
serves within `timeout` finishes, as across a HUP. Every abandoned refork but a HUP's
makes the next one wait (RETRY_DELAYS).

The Reforker is a policy (actions.py): it owns the refork in progress, the one requested
meanwhile, the thresholds and the retries; it reads the table of children (fleet.py) and
yields what the arbiter is to do.
"""
import signal
import time

from gunicorn_smartspawn.master.actions import (
    BeginRefork, GiveBack, NewTemplate, Replace, Retire, TellCandidate,
)
from gunicorn_smartspawn.master.backoff import Backoff
from gunicorn_smartspawn.master.fleet import State
from gunicorn_smartspawn.spawner.template import GATE_CLOSED

# Delays before a refork is tried again after one was abandoned, in a row (seconds): a
# refork that failed (its candidate timed out, crashed, was busy, a prevent_fork() block)
# would otherwise be tried at once on the next worker past the threshold, and fail the
# same way.
RETRY_DELAYS = (1, 2, 5, 10, 30)
# A request running longer than this on a worker makes it a poor candidate: told to
# become the template, it would leave service only once that request ends.
LONG_REQUEST = 1.0


def refork_enabled(cfg):
    return bool(cfg.fork_worker) or cfg.refork_on_memory


def choose_candidate(records, counters, now, min_requests=0, by_age=False):
    """The booted, fork-safe serving worker with a channel to the master that has served
    `min_requests` or more, or None: an idle one first, then one in a short request, then
    one in a long request; the oldest among equals (`by_age`: the oldest, worker-0).
    `records`: the live workers' records; `now`: time.monotonic()."""
    eligible = [r for r in records if r.channel is not None
                and r.state in (State.SERVING, State.OUTGOING) and r.heartbeat_moved()
                and not counters.get(r.slot, "fork_unsafe")
                and counters.requests(r.slot) >= min_requests]

    def preference(record):
        if by_age:
            return record.worker.age
        busy = busy_for(counters, record, now)
        return busy > LONG_REQUEST, busy > 0, record.worker.age
    return min(eligible, key=preference, default=None)


def busy_for(counters, record, now):
    """How long (seconds) `record`'s current request has run, or its granted out-of-band
    work; 0 when neither runs. Requests are known of the sync worker only (counters.py);
    out-of-band work of every worker class."""
    since = counters.get(record.slot, "busy_since_us")
    if since <= counters.get(record.slot, "last_request_us"):  # between requests
        since = counters.get(record.slot, "oob_since_us")
    return max(now - since / 1e6, 1e-6) if since else 0.0


class Refork:
    """One refork in progress."""

    def __init__(self, candidate, generation, reason, threshold, started, promote_timeout,
                 newest_age):
        self.candidate = candidate          # its record
        self.newest_age = newest_age        # of the workers at its start: younger ones
                                            # came after (its stand-in)
        self.generation = generation
        self.reason = reason
        self.threshold = threshold          # the request count that triggered it, or None
        self.started = started
        self.promote_deadline = started + promote_timeout
        self.signalled = False              # the candidate got BecomeTemplate + URG
        self.template = None                # its record once the candidate is ready
        self.old = []                       # ages of the workers still to replace
        self.stopping = None                # the age of the old worker being replaced
        self.replaced = 0                   # old workers replaced so far (for the log)

    @property
    def promoting(self):
        return self.template is None

    def __repr__(self):
        return "refork to generation %s (%s)" % (self.generation, self.reason)


class Reforker:
    """The master's reforks, a policy over `fleet` (see the module docstring). Each method
    that may act is a generator of actions; `situation` is this turn's (actions.py)."""

    def __init__(self, cfg, log, fleet, workers, clock=time.monotonic):
        self.cfg, self.log, self.fleet, self.clock = cfg, log, fleet, clock
        self.current = None           # the Refork in progress
        self.requested = None         # a trigger that arrived while busy (coalesced)
        self.threshold_index = 0      # the next fork_worker threshold to wait for
        self.done = 0
        self.last = None              # the last Refork done
        self.last_refork_at = clock()  # or the start (refork_min_interval)
        self.retries = Backoff(RETRY_DELAYS, clock)  # after abandoned reforks, in a row
        self.retry_why = None         # what the last abandoned one failed on
        self.published = self.snapshot()
        if refork_enabled(cfg) and workers < 2:
            self.log.warning("fork_worker/refork_on_memory: a refork needs two or more workers; "
                             "with workers = %s none will happen", workers)

    @property
    def enabled(self):
        return refork_enabled(self.cfg)

    def request(self, reason, situation, threshold=None):
        try:
            yield from self.take_request(reason, situation, threshold)
        finally:
            self.publish()

    def take_request(self, reason, situation, threshold):
        if situation.workers < 2:
            self.log.info("Refork (%s) skipped: needs two or more workers", reason)
            return  # not kept for later: it would fire at the next TTIN
        busy = self.busy(situation)
        if busy:
            if self.requested is None:
                self.log.info("Refork (%s) deferred: %s", reason, busy)
            self.requested = (reason, threshold)
            return
        yield from self.start(reason, threshold, situation)

    def busy(self, situation):
        """Why a refork cannot start now, or None."""
        fleet = self.fleet
        if situation.workers < 2:
            return "needs two or more workers"
        if situation.halting:
            return "shutting down"
        if situation.reloading:
            return "a HUP is replacing the workers"
        if self.current is not None:
            return "%r in progress" % self.current
        if fleet.next_preloader is not None:
            return "a HUP is loading new code"
        if situation.preloader_starting:
            return "the preloader is (re)starting"
        if fleet.pending or len(fleet.workers) < situation.workers:
            return "workers are being spawned"
        if fleet.outgoing():
            return "workers are being replaced"
        if any(r.disabled for r in fleet.worker_records()):
            # A refork would replace it: the operator is looking into it.
            return "a worker is disabled (worker enable PID puts it back)"
        if self.retries.waiting():
            return "waiting to retry after %s" % self.retry_why
        return None

    def ready_for_memory_refork(self, situation):
        """True if refork_on_memory may start one now."""
        return (self.clock() - self.last_refork_at >= self.cfg.refork_min_interval
                and not self.busy(situation) and self.candidate() is not None)

    def decide(self, situation):
        if not self.enabled:
            return
        try:
            yield from self.advance_or_start(situation)
        finally:
            self.publish()

    def advance_or_start(self, situation):
        if self.current is not None:
            yield from self.advance(situation)
            if self.current is not None:
                return
        # A refork that just finished lets a coalesced one start in the same turn: the
        # master's next turn can be a second away (its sleep), a gap that made the end
        # of a URG storm look settled while one more refork was still to come.
        if self.requested is not None and not self.busy(situation):
            reason, threshold = self.requested
            self.requested = None
            yield from self.start(reason, threshold, situation)
        elif self.requested is None:
            yield from self.check_threshold(situation)

    def candidate(self, min_requests=0, by_age=False):
        return choose_candidate(self.fleet.worker_records(), self.fleet.counters,
                                self.clock(), min_requests, by_age)

    def check_threshold(self, situation):
        thresholds = self.cfg.fork_worker
        if self.threshold_index >= len(thresholds) or self.busy(situation):
            return
        threshold = thresholds[self.threshold_index]
        # Counted on worker-0 (Puma's fork_worker); the candidate is then the best of the
        # workers past the threshold, worker-0 among them.
        worker_0 = self.candidate(by_age=True)
        if worker_0 is not None and self.fleet.counters.requests(worker_0.slot) >= threshold:
            yield from self.start("worker-0 served %s requests" % threshold, threshold,
                                  situation)

    def start(self, reason, threshold, situation):
        candidate = self.candidate(threshold or 0)
        if candidate is None:
            self.log.warning("Refork (%s) skipped: no serving worker can become the "
                             "template", reason)
            return
        generation = situation.generation + 1
        self.last_refork_at = self.clock()
        newest = max(r.worker.age for r in self.fleet.worker_records())
        refork = self.current = Refork(candidate, generation, reason, threshold, self.clock(),
                                       self.cfg.graceful_timeout + 10, newest)
        yield BeginRefork(candidate)
        if self.current is not refork:
            return  # on_refork raised: abandoned already
        # The refork's one line when it starts (its end: finish()); the rest is at DEBUG.
        self.log.info("Refork to generation %s (%s): worker (pid: %s, %s requests) "
                      "becomes the template once one more worker serves", generation, reason,
                      candidate.pid, self.fleet.counters.requests(candidate.slot),
                      extra={"metric": "smartspawn.reforks", "value": 1, "mtype": "counter"})

    def extra_workers(self):
        """Workers over `workers` the refork needs now: its stand-in, until the candidate
        is a template (it leaves WORKERS then)."""
        return 1 if self.current is not None and self.current.promoting else 0

    def leaving(self):
        """The pid of the worker leaving service for the template (its reuse_port sockets
        go to the stand-in), or None."""
        return self.current.candidate.pid if self.current is not None else None

    def template_ready(self, record, seconds):
        """Candidate `record` finished its requests and froze its heap: it is a template
        now (the table has made it one)."""
        refork = self.current
        if refork is None or refork.candidate is not record:
            yield Retire(record)  # its refork was abandoned meanwhile
            return
        refork.template = record
        yield NewTemplate(record, refork.generation)
        refork.old = sorted(r.worker.age for r in self.fleet.worker_records())
        self.log.debug("%r ready in %.3fs; replacing %s workers one at a time",
                       record, seconds, len(refork.old))

    def advance(self, situation):
        refork, fleet = self.current, self.fleet
        if refork.promoting:
            if self.clock() > refork.promote_deadline:
                yield from self.promotion_timed_out(refork)
            elif (not refork.signalled and self.stand_in_serves(refork, situation)
                    and self.busy_for(refork.candidate) <= LONG_REQUEST):
                # Not told while in a long request: that request would hold the
                # promotion until it ends, however long `timeout` lets it run.
                refork.signalled = True
                yield TellCandidate(refork.candidate, refork.generation)
            return
        records = fleet.worker_records()
        ages = {r.worker.age: r for r in records}
        new = [r for r in records if r.worker.age not in refork.old]
        if (refork.stopping in ages or fleet.pending or len(fleet.workers) < situation.workers
                or not all(r.heartbeat_moved() for r in new)):
            return  # the last swap is not complete yet
        remaining = [age for age in refork.old if age in ages]
        if not remaining:
            self.finish()
            return
        refork.stopping = remaining[0]
        refork.old.remove(remaining[0])
        refork.replaced += 1
        yield Replace(ages[remaining[0]], repr(refork))

    def busy_for(self, record):
        return busy_for(self.fleet.counters, record, self.clock())

    def stand_in_serves(self, refork, situation):
        # SERVING: not outgoing, not stopping, nor an abandoned refork's candidate
        # finishing its request.
        serving = [r for r in self.fleet.worker_records()
                   if r.state is State.SERVING and r.heartbeat_moved()]
        return not self.fleet.pending and len(serving) >= situation.workers

    def worker_stopping(self, record, sig):
        """The master is stopping worker `record` (TTOU, a timeout, a replacement, a HUP).

        The candidate among them gives up the refork: told to become the template and to
        stop at once, it could get ready and then exit, taking the spawns sent to it."""
        refork = self.current
        if refork is not None and refork.candidate is record:
            yield from self.abort("the chosen worker (pid: %s) is being stopped (%s)"
                                  % (record.pid, signal.Signals(sig).name))

    def promotion_timed_out(self, refork):
        """Never a kill: the candidate may be serving a request that `timeout` allows, and
        gunicorn's own heartbeat check still watches it (it is a worker until ready)."""
        seconds = refork.promote_deadline - refork.started
        candidate = refork.candidate
        if not refork.signalled:
            busy = self.busy_for(candidate)
            if busy > LONG_REQUEST:
                why = "the chosen worker (pid: %s) has been serving a request for %.0fs" % (
                    candidate.pid, busy)
            else:
                why = "no extra worker served within %.0fs" % seconds
            yield from self.abort(why)
            # Never told, it keeps serving: the stand-in is the worker over `workers`.
            stand_ins = [r for r in self.fleet.worker_records()
                         if r.worker.age > refork.newest_age and r.state is State.SERVING]
            if stand_ins:
                yield Replace(stand_ins[0], "%r was abandoned: the extra worker is not needed"
                              % refork)
            return
        # Told, and still not ready: a request that came in as it was told, a slow
        # pre_template_fork. It finishes that, then, ready as a template nobody waits
        # for, is retired. Outgoing meanwhile: not counted, so no other worker is
        # stopped as the one over `workers`.
        yield from self.abort("the chosen worker (pid: %s) did not become the template within "
                              "%.0fs; it is not stopped: what it serves may finish"
                              % (candidate.pid, seconds))
        yield Replace(candidate, "%r was abandoned after it was told" % refork)

    def finish(self):
        refork, self.current = self.current, None
        self.done += 1
        self.last = refork
        self.retries.succeeded()
        if refork.threshold is not None:
            self.threshold_index += 1
        self.log.info("%r done in %.2fs: %s workers replaced", refork,
                      self.clock() - refork.started, refork.replaced)

    def end_generation(self):
        """A HUP: abandon any refork, retire the template; thresholds start again."""
        if self.current is not None:
            yield from self.abort("HUP", failed=False)
        if self.fleet.template is not None:
            yield Retire(self.fleet.template)
        self.threshold_index = 0
        self.retries.succeeded()

    def abort(self, why, failed=True, retry_why="an abandoned refork"):
        """Abandon the refork in progress. `failed` (all but a HUP): the next one waits,
        longer after each failure in a row (RETRY_DELAYS); returns that wait."""
        refork, self.current = self.current, None
        delay = None
        if failed:
            self.retry_why = retry_why
            delay = self.retries.failed()
            self.log.warning("%r abandoned: %s; no refork for %ss", refork, why, delay)
        else:
            self.log.warning("%r abandoned: %s", refork, why)
        if not refork.signalled:
            yield GiveBack(refork.candidate)  # it never heard of it: a worker again
        return delay

    def template_gone(self, record):
        """Spawner `record`, a candidate or a template, has exited."""
        refork = self.current
        if refork is None or refork.candidate is not record:
            return
        if not refork.signalled:
            yield from self.abort("the chosen worker (pid: %s) exited before it was told (TTOU, "
                                  "a crash)" % record.pid)
            return
        why = record.failure.reason if record.failure else "it exited"
        gate = record.failure is not None and record.failure.exit_code == GATE_CLOSED
        delay = yield from self.abort(
            "the template (pid: %s) gave up: %s" % (record.pid, why),
            retry_why="a prevent_fork() block" if gate else "an abandoned refork")
        if gate:
            self.requested = (refork.reason, refork.threshold)  # it keeps its threshold
            self.log.info("Refork (%s) will be tried again in %ss", refork.reason, delay)
        elif refork.threshold is not None:
            # Else the next worker to reach it would be sacrificed the same way.
            self.threshold_index += 1

    def snapshot(self):
        return {"reforks": self.done, "refork_in_progress": self.current is not None,
                "refork_pending": self.requested is not None}

    def publish(self):
        # The control socket's thread reads stats() at any moment; a turn that ends one
        # refork and starts the coalesced one passes through "none in progress, one
        # pending", which must not be seen (it looks settled). One assignment: atomic.
        self.published = self.snapshot()

    def stats(self):
        return self.published
