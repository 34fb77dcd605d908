"""The master's worker lifecycle: replace workers before they stop, watch their memory.

- **Spawn before retire.** A worker that is to be recycled (it reached `max_requests`, or
  its memory stayed above `max_worker_memory`) becomes *outgoing*: it keeps serving but
  no longer counts toward `workers`, so gunicorn's own manage_workers() spawns its
  replacement; once `workers` others are serving, the outgoing worker is sent TERM and
  finishes its requests. The number of accepting workers never drops below `workers`.
- **Memory samples.** Every `memory_sample_interval` seconds the master reads each
  worker's USS (private memory) and RSS from the kernel, for `max_worker_memory` and
  `refork_on_memory` (the rule is in MemoryGrowth below).
- **Idle preloader.** With `preloader_idle_timeout`, a preloader that spawned nothing for
  that long is stopped; the next spawn comes from the template, or from a preloader
  started on demand (arbiter.py, spawn_workers).
- **Failing template.** A template whose workers exit before they ever serve, several in
  a row, is abandoned: spawns go back to the preloader.
- **Failing workers.** When workers keep exiting before they serve, wherever they come
  from, the master waits longer and longer between spawns (up to 10 s).

The Lifecycle is a policy (actions.py): it reads the table of children (fleet.py), where
each worker's state and memory samples are, and yields what to do; it owns only its
counts and the memory rule.
"""
import signal
import time

import psutil

from gunicorn_smartspawn.master.actions import AbandonTemplate, Replace, Retire, StartRefork, Stop
from gunicorn_smartspawn.master.backoff import Backoff
from gunicorn_smartspawn.master.fleet import State

MIB = 1024 * 1024
# Samples in a row a condition must hold before the master acts on it (a noisy figure
# never triggers anything on its own).
SAMPLES_IN_A_ROW = 3
# Workers forked from one template that exit before serving, in a row, before the
# template is abandoned.
TEMPLATE_CHILD_FAILURES = 3
# The waits between spawns after workers, in a row (from anywhere), exit before they ever
# serve (seconds): none for the first four, then longer and longer. A worker that cannot
# start must not be respawned hundreds of times a second.
RESPAWN_DELAYS = (0, 0, 0, 0, 1, 2, 4, 8, 10)


def measure_memory(pid):
    """(USS, RSS) of process `pid` in bytes, or None if it cannot be read."""
    try:
        info = psutil.Process(pid).memory_full_info()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None
    return info.uss, info.rss


class MemoryGrowth:
    """refork_on_memory's rule, for one generation of workers.

    The baseline is the lowest mean USS of the generation's workers seen so far, with
    what they shared at that sample (mean RSS - USS): the pages a refork would make
    shared again are the ones they un-shared or filled since. When the mean USS exceeds
    the baseline by more than `refork_memory_growth` times that shared size, for
    SAMPLES_IN_A_ROW samples in a row, a refork pays off.
    """

    def __init__(self, generation):
        self.generation = generation
        self.baseline_uss = None
        self.shared = None
        self.in_a_row = 0
        self.growth = 0

    def observe(self, uss_values, rss_values, fraction):
        """Record one sample; returns True when the rule fires."""
        mean_uss = sum(uss_values) / len(uss_values)
        if self.baseline_uss is None or mean_uss < self.baseline_uss:
            self.baseline_uss = mean_uss
            self.shared = sum(rss_values) / len(rss_values) - mean_uss
        self.growth = mean_uss - self.baseline_uss
        self.in_a_row = self.in_a_row + 1 if self.growth > fraction * self.shared else 0
        return self.in_a_row >= SAMPLES_IN_A_ROW


class Lifecycle:
    """The master's worker lifecycle, a policy over `fleet` (see the module docstring).

    `clock` and `measure` (pid -> (USS, RSS) or None) are the real ones in the master,
    fakes in tests.
    """

    def __init__(self, cfg, log, fleet, clock=time.monotonic, measure=measure_memory):
        self.cfg, self.log, self.fleet = cfg, log, fleet
        self.clock, self.measure = clock, measure
        self.next_sample = clock()
        self.memory_growth = None      # MemoryGrowth of the current generation
        self.warned_born_over = None   # the max_worker_memory a new worker was above
        self.template_child_failures = 0
        self.boot_failures = Backoff(RESPAWN_DELAYS, clock)  # workers that never served
        self.stats = {"memory_samples": 0, "replaced_max_requests": 0,
                      "replaced_max_worker_memory": 0, "memory_reforks": 0,
                      "preloader_idle_exits": 0, "templates_abandoned": 0}

    def decide(self, situation, refork_running, refork_ready):
        """Yield this turn's actions. `refork_running()`: a refork is in progress;
        `refork_ready()`: one could start now (refork_on_memory). Both are asked when
        needed: an action yielded before may have changed the answer."""
        if not refork_running():
            yield from self.collect_retire_requests()
        yield from self.sample_memory(situation, refork_running, refork_ready)
        yield from self.stop_replaced_workers(situation)
        yield from self.stop_idle_preloader(refork_running)
        yield from self.watch_template_children(situation)

    def not_counted(self):
        """The outgoing workers still running: they serve, but not toward `workers`."""
        return len(self.fleet.outgoing())

    def replaced(self, stat):
        """Count a replacement this policy asked for (Replace.stat)."""
        self.stats[stat] += 1

    # -- spawn before retire --------------------------------------------------------------

    def collect_retire_requests(self):
        counters = self.fleet.counters
        for record in self.fleet.worker_records():
            if not record.outgoing and counters.get(record.slot, "retire"):
                yield Replace(record, "it served %s requests (max_requests)"
                              % counters.requests(record.slot), "replaced_max_requests")

    def stop_replaced_workers(self, situation):
        records = self.fleet.worker_records()
        waiting = [r for r in records if r.state is State.OUTGOING]
        if not waiting:
            return
        serving = [r for r in records if r.state is State.SERVING and not r.disabled
                   and r.heartbeat_moved()]
        if len(serving) < situation.workers:
            return
        for record in waiting:
            yield Stop(record, signal.SIGTERM)

    # -- memory ---------------------------------------------------------------------------

    def sample_memory(self, situation, refork_running, refork_ready):
        cfg = self.cfg
        now = self.clock()
        if not (cfg.max_worker_memory or cfg.refork_on_memory) or now < self.next_sample:
            return
        self.next_sample = now + cfg.memory_sample_interval
        sampled = []
        for record in self.fleet.worker_records():
            # A disabled worker is kept as it is: the operator is looking into it.
            if record.outgoing or record.disabled or not record.heartbeat_moved():
                continue
            sample = self.measure(record.pid)
            if sample is None:
                continue
            if record.uss is None and not self.fleet.counters.requests(record.slot):
                record.unserved_uss = sample[0]  # its first sample, before it served
            record.uss, record.rss = sample  # the record's memory sample, for status too
            sampled.append(record)
        if not sampled:
            return
        self.stats["memory_samples"] += 1
        mean_mib = sum(r.uss for r in sampled) / len(sampled) / MIB
        self.log.debug("Workers' mean USS: %.1f MiB", mean_mib, extra={
            "metric": "smartspawn.worker_uss_mean_mib", "value": round(mean_mib, 1),
            "mtype": "gauge"})
        if cfg.max_worker_memory:
            yield from self.enforce_memory_limit(sampled, cfg.max_worker_memory,
                                                 refork_running)
        if cfg.refork_on_memory:
            yield from self.refork_if_memory_grew(sampled, situation.generation, refork_ready)

    def enforce_memory_limit(self, sampled, limit, refork_running):
        for record in sampled:
            if record.unserved_uss is not None and record.unserved_uss > limit:
                # Above the limit before it served a request: its replacement would be
                # as large, and be replaced in turn, forever.
                self.warn_born_over(record, limit)
                continue
            over = record.uss > limit
            record.over_limit = record.over_limit + 1 if over else 0
            if record.over_limit >= SAMPLES_IN_A_ROW and not refork_running():
                yield Replace(
                    record, "its private memory (USS) %.1f MiB stayed above "
                    "max_worker_memory %.1f MiB for %s samples"
                    % (record.uss / MIB, limit / MIB, record.over_limit),
                    "replaced_max_worker_memory")

    def warn_born_over(self, record, limit):
        if self.warned_born_over == limit:
            return
        self.warned_born_over = limit
        self.log.warning(
            "max_worker_memory = %.1f MiB is below what a new worker holds: worker (pid: %s) "
            "had %.1f MiB of private memory (USS) before its first request. Replacing it "
            "would give a worker as large, so workers above the limit before they serve "
            "are not replaced for memory; raise max_worker_memory", limit / MIB, record.pid,
            record.unserved_uss / MIB)

    def refork_if_memory_grew(self, sampled, generation, refork_ready):
        if len(sampled) < 2:
            return
        # A refork or a HUP starts a new generation, and a new baseline. Workers of an
        # older generation (respawned from the preloader after a template died) count.
        if self.memory_growth is None or self.memory_growth.generation != generation:
            self.memory_growth = MemoryGrowth(generation)
        rule = self.memory_growth
        fired = rule.observe([r.uss for r in sampled], [r.rss for r in sampled],
                             self.cfg.refork_memory_growth)
        if not (fired and refork_ready()):
            return
        self.stats["memory_reforks"] += 1
        self.log.debug("memory refork", extra={"metric": "smartspawn.memory_reforks",
                                               "value": 1, "mtype": "counter"})
        yield StartRefork("memory: the workers' mean USS grew by %.1f MiB, more than %s "
                          "of the %.1f MiB they share" % (
                              rule.growth / MIB, self.cfg.refork_memory_growth,
                              rule.shared / MIB))

    # -- spawners ----------------------------------------------------------------------

    def stop_idle_preloader(self, refork_running):
        idle_timeout, fleet = self.cfg.preloader_idle_timeout, self.fleet
        preloader = fleet.preloader
        if (not idle_timeout or preloader is None or not preloader.usable
                or fleet.next_preloader is not None or refork_running()
                or self.clock() - preloader.last_used < idle_timeout
                or fleet.pending_of(preloader.pid)):
            return
        self.log.info("%r spawned nothing for %ss (preloader_idle_timeout): stopping it to "
                      "free its memory; the next spawn comes from %s", preloader,
                      idle_timeout, "the template" if fleet.template
                      else "a preloader started on demand")
        self.stats["preloader_idle_exits"] += 1
        yield Retire(preloader)

    def new_template(self):
        self.template_child_failures = 0

    def watch_template_children(self, situation):
        """Count the template's workers that exited before serving; abandon it after a few."""
        template = self.fleet.template
        for record in self.fleet.worker_records():
            if not record.served and record.heartbeat_moved():
                record.served = True
                self.boot_failures.succeeded()  # a success breaks the row
                if template is not None and record.spawner_pid == template.pid:
                    self.template_child_failures = 0
        if template is None or self.template_child_failures < TEMPLATE_CHILD_FAILURES:
            return
        self.log.error("%r abandoned: %s workers forked from it in a row exited before "
                       "serving; spawning from the %s", template, self.template_child_failures,
                       "preloader" if situation.smart else "master")
        self.stats["templates_abandoned"] += 1
        self.template_child_failures = 0
        yield AbandonTemplate(template, "its template's workers fail to boot")

    def count_boot_failures(self, departed, halting):
        """`departed`: the records of the workers just reaped; those that never booted
        and were not stopped on purpose failed to boot."""
        failed = [r.spawner_pid for r in departed if not (r.booted or r.stopped_on_purpose)]
        if not failed or halting:
            return
        template = self.fleet.template
        if template is not None:
            self.template_child_failures += failed.count(template.pid)
        delay = self.boot_failures.failed(len(failed))
        if delay:
            self.log.warning("%s workers in a row exited before they served; the next "
                             "spawn waits %.0fs", self.boot_failures.failures, delay)

    def may_spawn(self):
        return not self.boot_failures.waiting()
