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

The Lifecycle owns the outgoing workers, the memory samples and these counts; it works
through the master's worker table and spawner pool, and asks the Reforker (refork.py) to
refork.
"""
import signal
import time

import psutil

from gunicorn_smartspawn.backoff import Backoff
from gunicorn_smartspawn.refork import booted

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
    """The master's worker lifecycle. `master` is the SmartArbiter (arbiter.py)."""

    def __init__(self, master):
        self.master = master
        self.cfg, self.log = master.cfg, master.log
        self.table, self.pool = master.table, master.pool
        self.outgoing = {}             # pid -> why it is being replaced
        self.sent_term = set()         # outgoing pids already told to stop
        self.next_sample = time.monotonic()
        self.memory_growth = None      # MemoryGrowth of the current generation
        self.template_child_failures = 0
        self.boot_failures = Backoff(RESPAWN_DELAYS)  # workers that exited before serving
        self.stopped_on_purpose = set()  # pids the master signalled to stop
        self.stats = {"memory_samples": 0, "replaced_max_requests": 0,
                      "replaced_max_worker_memory": 0, "memory_reforks": 0,
                      "preloader_idle_exits": 0, "templates_abandoned": 0}

    def manage(self):
        workers = self.table.workers
        for pid in [pid for pid in self.outgoing if pid not in workers]:
            del self.outgoing[pid]
            self.sent_term.discard(pid)
        if self.master.reforker.current is None:
            self.collect_retire_requests()
        self.sample_memory()
        self.stop_replaced_workers()
        self.stop_idle_preloader()
        self.watch_template_children()

    def not_counted(self):
        """The outgoing workers still running: they serve, but not toward `workers`."""
        return sum(pid in self.table.workers for pid in self.outgoing)

    # -- spawn before retire --------------------------------------------------------------

    def replace(self, worker, why, stat=None):
        """Make `worker` outgoing; `stat`: the stats (and statsd) count to add to."""
        self.outgoing[worker.pid] = why
        extra = {}
        if stat is not None:
            self.stats[stat] += 1
            extra = {"metric": "smartspawn.%s" % stat, "value": 1, "mtype": "counter"}
        self.log.info("Replacing worker (pid: %s): %s; it serves until its replacement "
                      "does", worker.pid, why, extra=extra)

    def collect_retire_requests(self):
        counters = self.table.counters
        for worker in list(self.table.workers.values()):
            if worker.pid not in self.outgoing and counters.get(worker.slot, "retire"):
                self.replace(worker, "it served %s requests (max_requests)"
                             % counters.requests(worker.slot), "replaced_max_requests")

    def stop_replaced_workers(self):
        waiting = [pid for pid in self.outgoing if pid not in self.sent_term]
        if not waiting:
            return
        serving = [w for pid, w in self.table.workers.items()
                   if pid not in self.outgoing and booted(w)]
        if len(serving) < self.master.num_workers:
            return
        for pid in waiting:
            self.sent_term.add(pid)
            self.master.kill_worker(pid, signal.SIGTERM)

    # -- memory ---------------------------------------------------------------------------

    def sample_memory(self):
        cfg = self.cfg
        now = time.monotonic()
        if not (cfg.max_worker_memory or cfg.refork_on_memory) or now < self.next_sample:
            return
        self.next_sample = now + cfg.memory_sample_interval
        sampled = []
        for pid, worker in list(self.table.workers.items()):
            if pid in self.outgoing or not booted(worker):
                continue
            try:
                info = psutil.Process(pid).memory_full_info()
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            worker.uss, worker.rss = info.uss, info.rss
            sampled.append(worker)
        if not sampled:
            return
        self.stats["memory_samples"] += 1
        mean_mib = sum(w.uss for w in sampled) / len(sampled) / MIB
        self.log.debug("Workers' mean USS: %.1f MiB", mean_mib, extra={
            "metric": "smartspawn.worker_uss_mean_mib", "value": round(mean_mib, 1),
            "mtype": "gauge"})
        if cfg.max_worker_memory:
            self.enforce_memory_limit(sampled, cfg.max_worker_memory)
        if cfg.refork_on_memory:
            self.refork_if_memory_grew(sampled, now)

    def enforce_memory_limit(self, sampled, limit):
        for worker in sampled:
            over = worker.uss > limit
            worker.over_limit = worker.over_limit + 1 if over else 0
            if worker.over_limit >= SAMPLES_IN_A_ROW and self.master.reforker.current is None:
                self.replace(
                    worker, "its private memory (USS) %.1f MiB stayed above "
                    "max_worker_memory %.1f MiB for %s samples"
                    % (worker.uss / MIB, limit / MIB, worker.over_limit),
                    "replaced_max_worker_memory")

    def refork_if_memory_grew(self, sampled, now):
        if len(sampled) < 2:
            return
        reforker, generation = self.master.reforker, self.master.generation
        # A refork or a HUP starts a new generation, and a new baseline. Workers of an
        # older generation (respawned from the preloader after a template died) count.
        if self.memory_growth is None or self.memory_growth.generation != generation:
            self.memory_growth = MemoryGrowth(generation)
        rule = self.memory_growth
        fired = rule.observe([w.uss for w in sampled], [w.rss for w in sampled],
                             self.cfg.refork_memory_growth)
        if (not fired or now - reforker.last_refork_at < self.cfg.refork_min_interval
                or reforker.busy() or reforker.candidate() is None):
            return
        self.stats["memory_reforks"] += 1
        self.log.debug("memory refork", extra={"metric": "smartspawn.memory_reforks",
                                               "value": 1, "mtype": "counter"})
        reforker.start("memory: the workers' mean USS grew by %.1f MiB, more than %s "
                       "of the %.1f MiB they share" % (
                           rule.growth / MIB, self.cfg.refork_memory_growth,
                           rule.shared / MIB), None)

    # -- spawners ----------------------------------------------------------------------

    def stop_idle_preloader(self):
        idle_timeout, pool = self.cfg.preloader_idle_timeout, self.pool
        preloader = pool.preloader
        if (not idle_timeout or preloader is None or not preloader.ready or preloader.retiring
                or pool.next_preloader is not None or self.master.reforker.current is not None
                or time.monotonic() - preloader.last_used < idle_timeout
                or self.table.pending_of(preloader.pid)):
            return
        self.log.info("%r spawned nothing for %ss (preloader_idle_timeout): stopping it to "
                      "free its memory; the next spawn comes from %s", preloader,
                      idle_timeout, "the template" if pool.template
                      else "a preloader started on demand")
        self.stats["preloader_idle_exits"] += 1
        self.master.retire(preloader)
        pool.preloader = None

    def new_template(self):
        self.template_child_failures = 0

    def watch_template_children(self):
        """Count the template's workers that exited before serving; abandon it after a few."""
        template = self.pool.template
        for worker in self.table.workers.values():
            if not worker.served and booted(worker):
                worker.served = True
                self.boot_failures.succeeded()  # a success breaks the row
                if template is not None and worker.spawner_pid == template.pid:
                    self.template_child_failures = 0
        if template is None or self.template_child_failures < TEMPLATE_CHILD_FAILURES:
            return
        self.log.error("%r abandoned: %s workers forked from it in a row exited before "
                       "serving; spawning from the %s", template, self.template_child_failures,
                       "preloader" if self.master.smart else "master")
        self.stats["templates_abandoned"] += 1
        self.template_child_failures = 0
        if self.master.reforker.current is not None:
            self.master.reforker.abort("its template's workers fail to boot")
        self.master.retire(template)
        self.pool.template = None

    def unbooted_workers(self):
        return [(pid, w.spawner_pid) for pid, w in self.table.workers.items() if not booted(w)]

    def count_boot_failures(self, unbooted):
        """`unbooted`: (pid, spawner pid) of the workers that had not served before this
        reap; those gone now exited before they served."""
        gone = [(pid, spawner) for pid, spawner in unbooted if pid not in self.table.workers]
        failed = [spawner for pid, spawner in gone if pid not in self.stopped_on_purpose]
        self.stopped_on_purpose.intersection_update(self.table.workers)  # the rest are gone
        if not failed or self.master.stopping:
            return
        template = self.pool.template
        if template is not None:
            self.template_child_failures += failed.count(template.pid)
        delay = self.boot_failures.failed(len(failed))
        if delay:
            self.log.warning("%s workers in a row exited before they served; the next "
                             "spawn waits %.0fs", self.boot_failures.failures, delay)

    def may_spawn(self):
        return not self.boot_failures.waiting()
