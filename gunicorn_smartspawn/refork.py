"""Refork policy and sequence, as the master sees them (fork_worker).

A refork: the oldest booted worker (the candidate) that the application did not mark
with no_longer_fork_safe() is to become the template. Spawn before retire: first a
stand-in is spawned, one worker over `workers`, so that capacity does not drop while the
candidate leaves service; once it serves, the candidate gets BecomeTemplate + SIGURG,
finishes its requests and reports ready as a template; the master then replaces every
older worker, one at a time (lifecycle.py): an old worker is stopped only once its
replacement and every other new worker is serving. Triggers: `fork_worker` thresholds, URG, the
control socket's `refork`, and `refork_on_memory` (lifecycle.py).

The Reforker owns the refork in progress, the one requested meanwhile, the thresholds
and the gate retries. It works through the master's parts: the worker table, the spawner
pool (which holds the template) and the lifecycle (which replaces workers).
"""
import os
import signal
import time

from gunicorn_smartspawn import protocol
from gunicorn_smartspawn.backoff import Backoff
from gunicorn_smartspawn.spawnerpool import SpawnerHandle
from gunicorn_smartspawn.template import GATE_CLOSED

# Delays before a refork refused by a prevent_fork() block is tried again (seconds).
GATE_RETRY_DELAYS = (1, 2, 5, 10, 30)
STOP_SIGNALS = {signal.SIGTERM, signal.SIGQUIT, signal.SIGINT, signal.SIGKILL, signal.SIGABRT}


def refork_enabled(cfg):
    return bool(cfg.fork_worker) or cfg.refork_on_memory


def booted(worker):
    """True once the worker has notified its heartbeat (it is in its serving loop)."""
    try:
        return worker.tmp.last_update() != worker.spawned_mtime
    except (OSError, ValueError):
        return False


def choose_candidate(workers, counters):
    """The oldest booted, fork-safe worker that has a channel to the master, or None."""
    eligible = [w for w in workers if w.channel is not None and booted(w)
                and not counters.get(w.slot, "fork_unsafe")]
    return min(eligible, key=lambda w: w.age, default=None)


class Refork:
    """One refork in progress."""

    def __init__(self, candidate, generation, reason, threshold, promote_timeout):
        self.candidate = candidate
        self.generation = generation
        self.reason = reason
        self.threshold = threshold          # the request count that triggered it, or None
        self.started = time.monotonic()
        self.promote_deadline = self.started + promote_timeout
        self.signalled = False              # the candidate got BecomeTemplate + URG
        self.template = None                # its SpawnerHandle once the candidate is ready
        self.old = []                       # ages of the workers still to replace
        self.stopping = None                # the age of the old worker being replaced

    @property
    def promoting(self):
        return self.template is None

    def __repr__(self):
        return "refork to generation %s (%s)" % (self.generation, self.reason)


class Reforker:
    """The master's reforks. `master` is the SmartArbiter (arbiter.py)."""

    def __init__(self, master):
        self.master = master
        self.cfg, self.log = master.cfg, master.log
        self.table, self.pool = master.table, master.pool
        self.current = None           # the Refork in progress
        self.requested = None         # a trigger that arrived while busy (coalesced)
        self.threshold_index = 0      # the next fork_worker threshold to wait for
        self.done = 0
        self.last_refork_at = time.monotonic()  # or the start (refork_min_interval)
        self.gate_refusals = Backoff(GATE_RETRY_DELAYS)  # by a prevent_fork() block
        self.published = self.snapshot()
        if refork_enabled(self.cfg) and master.num_workers < 2:
            self.log.warning("fork_worker/refork_on_memory: a refork needs two or more workers; "
                             "with workers = %s none will happen", master.num_workers)

    @property
    def enabled(self):
        return refork_enabled(self.cfg)

    def request(self, reason, threshold=None):
        try:
            self.take_request(reason, threshold)
        finally:
            self.publish()

    def take_request(self, reason, threshold):
        if self.master.num_workers < 2:
            self.log.info("Refork (%s) skipped: needs two or more workers", reason)
            return  # not kept for later: it would fire at the next TTIN
        busy = self.busy()
        if busy:
            if self.requested is None:
                self.log.info("Refork (%s) deferred: %s", reason, busy)
            self.requested = (reason, threshold)
            return
        self.start(reason, threshold)

    def busy(self):
        """Why a refork cannot start now, or None."""
        master = self.master
        if master.num_workers < 2:
            return "needs two or more workers"
        if master.stopping:
            return "shutting down"
        if master.reloading:
            return "a HUP is replacing the workers"
        if self.current is not None:
            return "%r in progress" % self.current
        if self.pool.next_preloader is not None:
            return "a HUP is loading new code"
        if master.preloader_starting():
            return "the preloader is (re)starting"
        if self.table.pending or len(self.table.workers) < master.num_workers:
            return "workers are being spawned"
        if master.lifecycle.outgoing:
            return "workers are being replaced"
        if self.gate_refusals.waiting():
            return "waiting to retry after a prevent_fork() block"
        return None

    def manage(self):
        if not self.enabled:
            return
        try:
            self.advance_or_start()
        finally:
            self.publish()

    def advance_or_start(self):
        if self.current is not None:
            self.advance()
            if self.current is not None:
                return
        # A refork that just finished lets a coalesced one start in the same turn: the
        # master's next turn can be a second away (its sleep), a gap that made the end
        # of a URG storm look settled while one more refork was still to come.
        if self.requested is not None and not self.busy():
            reason, threshold = self.requested
            self.requested = None
            self.start(reason, threshold)
        elif self.requested is None:
            self.check_threshold()

    def candidate(self):
        return choose_candidate(self.table.workers.values(), self.table.counters)

    def check_threshold(self):
        thresholds = self.cfg.fork_worker
        if self.threshold_index >= len(thresholds) or self.busy():
            return
        candidate = self.candidate()
        threshold = thresholds[self.threshold_index]
        if candidate is not None and self.table.counters.requests(candidate.slot) >= threshold:
            self.start("worker-0 served %s requests" % threshold, threshold)

    def start(self, reason, threshold):
        candidate = self.candidate()
        if candidate is None:
            self.log.warning("Refork (%s) skipped: no serving worker can become the "
                             "template", reason)
            return
        generation = self.master.generation + 1
        self.last_refork_at = time.monotonic()
        self.cfg.on_refork(self.master)
        handle = SpawnerHandle("template", candidate.pid, candidate.channel, generation)
        candidate.channel = None  # the handle owns it now
        self.pool.add(handle)
        self.current = Refork(candidate, generation, reason, threshold,
                              promote_timeout=self.cfg.graceful_timeout + 10)
        self.log.info("Refork to generation %s (%s): worker (pid: %s, %s requests) "
                      "becomes the template once a stand-in serves", generation, reason,
                      candidate.pid, self.table.counters.requests(candidate.slot))
        self.log.debug("refork started", extra={"metric": "smartspawn.reforks", "value": 1,
                                                "mtype": "counter"})

    def extra_workers(self):
        """Workers over `workers` the refork needs now: its stand-in, until the candidate
        is a template (it leaves WORKERS then)."""
        return 1 if self.current is not None and self.current.promoting else 0

    def leaving(self):
        """The pid of the worker leaving service for the template (its reuse_port sockets
        go to the stand-in), or None."""
        return self.current.candidate.pid if self.current is not None else None

    def signal_candidate(self, refork):
        """The stand-in serves: the candidate may leave service now."""
        refork.signalled = True
        handle = self.pool.by_pid(refork.candidate.pid)
        try:
            if handle is None:
                raise ProcessLookupError("its channel is closed")
            protocol.send(handle.channel, protocol.BecomeTemplate(refork.generation))
            os.kill(refork.candidate.pid, signal.SIGURG)
        except OSError as exc:
            self.abort("the candidate is gone (%s)" % exc)

    def template_ready(self, handle, seconds):
        """The candidate finished its requests and froze its heap: it is a template now."""
        candidate = self.table.workers.pop(handle.pid, None)
        if candidate is not None:  # no longer a worker: gunicorn must not time it out
            candidate.tmp.close()
        self.pool.template_ready(handle, candidate)  # reaped as a spawner from now on
        refork = self.current
        if refork is None or refork.candidate.pid != handle.pid:
            self.master.retire(handle)  # its refork was abandoned meanwhile
            return
        if self.pool.template is not None:
            self.master.retire(self.pool.template)
        self.pool.template = refork.template = handle
        self.master.lifecycle.new_template()
        self.master.generation = refork.generation
        refork.old = sorted(worker.age for worker in self.table.workers.values())
        self.log.info("%r ready in %.3fs; replacing %s workers one at a time",
                      handle, seconds, len(refork.old))

    def advance(self):
        refork, workers = self.current, self.table.workers
        if refork.promoting:
            if time.monotonic() > refork.promote_deadline:
                self.promotion_timed_out(refork)
            elif not refork.signalled and self.stand_in_serves(refork):
                self.signal_candidate(refork)
            return
        ages = {worker.age: pid for pid, worker in workers.items()}
        new = [w for w in workers.values() if w.age not in refork.old]
        if (refork.stopping in ages or self.table.pending
                or len(workers) < self.master.num_workers or not all(booted(w) for w in new)):
            return  # the last swap is not complete yet
        remaining = [age for age in refork.old if age in ages]
        if not remaining:
            self.finish()
            return
        refork.stopping = remaining[0]
        refork.old.remove(remaining[0])
        self.master.lifecycle.replace(workers[ages[remaining[0]]], repr(refork))

    def stand_in_serves(self, refork):
        outgoing = self.master.lifecycle.outgoing
        serving = [w for pid, w in self.table.workers.items()
                   if pid != refork.candidate.pid and pid not in outgoing and booted(w)]
        return not self.table.pending and len(serving) >= self.master.num_workers

    def worker_stopping(self, pid, sig):
        """The master is stopping worker `pid` (TTOU, a timeout, a replacement, a HUP).

        The candidate among them gives up the refork: told to become the template and to
        stop at once, it could get ready and then exit, taking the spawns sent to it."""
        refork = self.current
        if refork is not None and refork.candidate.pid == pid and sig in STOP_SIGNALS:
            self.abort("its candidate (pid: %s) is being stopped (%s)"
                       % (pid, signal.Signals(sig).name))

    def promotion_timed_out(self, refork):
        if not refork.signalled:
            self.abort("no stand-in served within %.0fs" % (
                refork.promote_deadline - refork.started))
            return
        self.log.error("%r: the candidate (pid: %s) did not become the template "
                       "in time; killing it", refork, refork.candidate.pid)
        self.abort("promotion timed out")
        self.master.kill_worker(refork.candidate.pid, signal.SIGKILL)

    def finish(self):
        refork, self.current = self.current, None
        self.done += 1
        self.gate_refusals.succeeded()
        if refork.threshold is not None:
            self.threshold_index += 1
        self.log.info("%r done in %.2fs", refork, time.monotonic() - refork.started)

    def end_generation(self):
        """A HUP: abandon any refork, retire the template; thresholds start again."""
        if self.current is not None:
            self.abort("HUP")
        if self.pool.template is not None:
            self.master.retire(self.pool.template)
            self.pool.template = None
        self.threshold_index = 0

    def abort(self, why):
        refork, self.current = self.current, None
        self.log.warning("%r abandoned: %s", refork, why)
        if not refork.signalled:
            # The candidate never heard of it: it stays a worker, with its channel back.
            handle = self.pool.by_pid(refork.candidate.pid)
            if handle is not None:
                refork.candidate.channel = self.pool.give_back(handle)

    def retry_after_gate(self, refork):
        delay = self.gate_refusals.failed()
        self.requested = (refork.reason, refork.threshold)
        self.log.info("Refork (%s) will be tried again in %ss", refork.reason, delay)

    def template_gone(self, handle):
        refork = self.current
        if refork is not None and refork.candidate.pid == handle.pid:
            if not refork.signalled:
                self.abort("the candidate (pid: %s) exited before it was told (TTOU, "
                           "a crash)" % handle.pid)
                return
            why = handle.failure.reason if handle.failure else "it exited"
            self.abort("the template (pid: %s) gave up: %s" % (handle.pid, why))
            if handle.failure and handle.failure.exit_code == GATE_CLOSED:
                self.retry_after_gate(refork)
            elif refork.threshold is not None:
                # Else the next worker to reach it would be sacrificed the same way.
                self.threshold_index += 1
        if handle is self.pool.template:
            self.pool.template = None
            self.log.error("%r exited; spawning from the %s", handle,
                           "preloader" if self.master.smart else "master")

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
