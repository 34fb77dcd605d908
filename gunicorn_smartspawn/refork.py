"""Refork policy and sequence, as the master sees them (fork_worker).

A refork: the oldest booted worker (the candidate) that the application did not mark
with no_longer_fork_safe() gets BecomeTemplate + SIGURG, finishes its requests and
reports ready as a template; the master then replaces every older worker, one at a time,
spawn before retire (lifecycle.py): an old worker is stopped only once its replacement
and every other new worker is serving. Triggers: `fork_worker` thresholds, URG, the
control socket's `refork`, and `refork_on_memory` (lifecycle.py).
"""
import os
import signal
import time

from gunicorn_smartspawn import protocol
from gunicorn_smartspawn.template import GATE_CLOSED

# Delays before a refork refused by a prevent_fork() block is tried again (seconds).
GATE_RETRY_BACKOFF = (1, 2, 5, 10, 30)


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
        self.template = None                # its SpawnerHandle once the candidate is ready
        self.old = []                       # ages of the workers still to replace
        self.stopping = None                # the age of the old worker being replaced

    @property
    def promoting(self):
        return self.template is None

    def __repr__(self):
        return "refork to generation %s (%s)" % (self.generation, self.reason)


class ReforkMixin:
    """The master's refork methods (mixed into SmartArbiter)."""

    def init_refork(self):
        self.template = None          # the current template's SpawnerHandle
        self.refork = None            # the Refork in progress
        self.refork_requested = None  # a trigger that arrived while busy (coalesced)
        self.threshold_index = 0      # the next fork_worker threshold to wait for
        self.reforks_done = 0
        self.last_refork_at = time.monotonic()  # or the start (refork_min_interval)
        self.gate_refusals = 0        # reforks refused in a row by a prevent_fork() block
        self.retry_refork_at = 0.0
        if refork_enabled(self.cfg) and self.num_workers < 2:
            self.log.warning("fork_worker/refork_on_memory: a refork needs two or more workers; "
                             "with workers = %s none will happen", self.num_workers)

    def handle_urg(self):
        if not refork_enabled(self.cfg):
            self.log.info("URG ignored: fork_worker is off")
            return
        self.request_refork("URG")

    def request_refork(self, reason, threshold=None):
        busy = self.refork_busy()
        if busy:
            if self.refork_requested is None:
                self.log.info("Refork (%s) deferred: %s", reason, busy)
            self.refork_requested = (reason, threshold)
            return
        self.start_refork(reason, threshold)

    def refork_busy(self):
        """Why a refork cannot start now, or None."""
        if self.num_workers < 2:
            return "needs two or more workers"
        if self.stopping:
            return "shutting down"
        if self.refork is not None:
            return "%r in progress" % self.refork
        if self.next_preloader is not None:
            return "a HUP is loading new code"
        if self.smart and (self.restart_at is not None
                           or (self.preloader is not None and not self.preloader.ready)):
            return "the preloader is (re)starting"
        if self.pending or len(self.WORKERS) < self.num_workers:
            return "workers are being spawned"
        if self.outgoing:
            return "workers are being replaced"
        if time.monotonic() < self.retry_refork_at:
            return "waiting to retry after a prevent_fork() block"
        return None

    def manage_refork(self):
        if not refork_enabled(self.cfg):
            return
        if self.refork is not None:
            self.advance_refork()
        elif self.refork_requested is not None and not self.refork_busy():
            reason, threshold = self.refork_requested
            self.refork_requested = None
            self.start_refork(reason, threshold)
        else:
            self.check_threshold()

    def check_threshold(self):
        thresholds = self.cfg.fork_worker
        if self.threshold_index >= len(thresholds) or self.refork_busy():
            return
        candidate = choose_candidate(self.WORKERS.values(), self.counters)
        threshold = thresholds[self.threshold_index]
        if candidate is not None and self.counters.requests(candidate.slot) >= threshold:
            self.start_refork("worker-0 served %s requests" % threshold, threshold)

    def start_refork(self, reason, threshold):
        from gunicorn_smartspawn.preloader import SpawnerHandle  # preloader.py imports us
        candidate = choose_candidate(self.WORKERS.values(), self.counters)
        if candidate is None:
            self.log.warning("Refork (%s) skipped: no serving worker can become the "
                             "template", reason)
            return
        generation = self.generation + 1
        self.last_refork_at = time.monotonic()
        self.cfg.on_refork(self)
        handle = SpawnerHandle("template", candidate.pid, candidate.channel, generation)
        candidate.channel = None  # the handle owns it now
        self.spawners.append(handle)
        self.refork = Refork(candidate, generation, reason, threshold,
                             promote_timeout=self.cfg.graceful_timeout + 10)
        self.log.info("Refork to generation %s (%s): worker (pid: %s, %s requests) "
                      "becomes the template", generation, reason, candidate.pid,
                      self.counters.requests(candidate.slot))
        self.log.debug("refork started", extra={"metric": "smartspawn.reforks", "value": 1,
                                                "mtype": "counter"})
        try:
            protocol.send(handle.channel, protocol.BecomeTemplate(generation))
            os.kill(candidate.pid, signal.SIGURG)
        except OSError as exc:
            self.abort_refork("the candidate is gone (%s)" % exc)

    def template_ready(self, handle, seconds):
        """The candidate finished its requests and froze its heap: it is a template now."""
        candidate = self.WORKERS.pop(handle.pid, None)
        if candidate is not None:  # no longer a worker: gunicorn must not time it out
            candidate.tmp.close()
        self.helpers[handle.pid] = "template"  # reaped (and logged) as a spawner from now on
        refork = self.refork
        if refork is None or refork.candidate.pid != handle.pid:
            self.retire(handle)  # its refork was abandoned meanwhile
            return
        if self.template is not None:
            self.retire(self.template)
        self.template = refork.template = handle
        self.template_child_failures = 0
        self.generation = refork.generation
        refork.old = sorted(worker.age for worker in self.WORKERS.values())
        self.log.info("%r ready in %.3fs; replacing %s workers one at a time",
                      handle, seconds, len(refork.old))

    def advance_refork(self):
        refork = self.refork
        if refork.promoting:
            if time.monotonic() > refork.promote_deadline:
                self.log.error("%r: the candidate (pid: %s) did not become the template "
                               "in time; killing it", refork, refork.candidate.pid)
                self.abort_refork("promotion timed out")
                self.kill_worker(refork.candidate.pid, signal.SIGKILL)
            return
        ages = {worker.age: pid for pid, worker in self.WORKERS.items()}
        new = [w for w in self.WORKERS.values() if w.age not in refork.old]
        if (refork.stopping in ages or self.pending or len(self.WORKERS) < self.num_workers
                or not all(booted(w) for w in new)):
            return  # the last swap is not complete yet
        remaining = [age for age in refork.old if age in ages]
        if not remaining:
            self.finish_refork()
            return
        refork.stopping = remaining[0]
        refork.old.remove(remaining[0])
        self.replace_worker(self.WORKERS[ages[remaining[0]]], repr(refork))

    def finish_refork(self):
        refork, self.refork = self.refork, None
        self.reforks_done += 1
        self.gate_refusals = 0
        if refork.threshold is not None:
            self.threshold_index += 1
        self.log.info("%r done in %.2fs", refork, time.monotonic() - refork.started)

    def end_template_generation(self):
        """A HUP: abandon any refork, retire the template; thresholds start again."""
        if self.refork is not None:
            self.abort_refork("HUP")
        if self.template is not None:
            self.retire(self.template)
            self.template = None
        self.threshold_index = 0

    def abort_refork(self, why):
        refork, self.refork = self.refork, None
        self.log.warning("%r abandoned: %s", refork, why)

    def retry_after_gate(self, refork):
        delay = GATE_RETRY_BACKOFF[min(self.gate_refusals, len(GATE_RETRY_BACKOFF) - 1)]
        self.gate_refusals += 1
        self.retry_refork_at = time.monotonic() + delay
        self.refork_requested = (refork.reason, refork.threshold)
        self.log.info("Refork (%s) will be tried again in %ss", refork.reason, delay)

    def template_gone(self, handle):
        refork = self.refork
        if refork is not None and refork.candidate.pid == handle.pid:
            why = handle.failure.reason if handle.failure else "it exited"
            self.abort_refork("the template (pid: %s) gave up: %s" % (handle.pid, why))
            if handle.failure and handle.failure.exit_code == GATE_CLOSED:
                self.retry_after_gate(refork)
            elif refork.threshold is not None:
                # Else the next worker to reach it would be sacrificed the same way.
                self.threshold_index += 1
        if handle is self.template:
            self.template = None
            self.log.error("%r exited; spawning from the %s", handle,
                           "preloader" if self.smart else "master")
