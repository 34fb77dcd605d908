"""Out-of-band work as Passenger coordinates it, and workers the operator takes out of
rotation: the master's side (the worker's is worker/oob.py).

A worker that wants out-of-band work (oob_gc, the work header) asks, in its slot of the
counters (`oob_asked` past `oob_done`). The master grants at most `oob_concurrency` asks
at once, the oldest first, by writing the ask's number to `oob_granted` and waking the
worker (SIG_COMMAND). So capacity never collapses because every worker collects at once.

Passenger: "if the process that triggered out-of-band work is the only process, Passenger
first spawns a new process before performing the work". Here: when no other worker would
serve meanwhile (`workers = 1`, or the others are in out-of-band work, outgoing or
disabled), the master asks for one worker over `workers` and grants once it serves; once the work is
done and that worker has asked for no more for EXTRA_LINGER seconds, the extra worker is
replaced away (it serves until then).

`worker disable PID` (the control socket) marks the worker's record and slot: the worker
stops accepting, finishes its requests and stays alive; it does not count toward
`workers`, so the master spawns one more; `worker enable PID` counts it again and the
youngest other worker leaves.
"""
import dataclasses
import time

from gunicorn_smartspawn.master.actions import Replace
from gunicorn_smartspawn.master.fleet import State

# Seconds an extra worker stays after the out-of-band work it was spawned for: a lone
# worker under load asks again within a few requests (oob_gc), and would otherwise have a
# worker spawned and stopped around each collection (Passenger keeps its extra process
# until the pool's idle timeout).
EXTRA_LINGER = 10.0

@dataclasses.dataclass(frozen=True)
class Grant:
    """Grant the worker's ask `ask`: write it to its slot and wake it (SIG_COMMAND)."""
    record: object
    ask: int


def oob_concurrency(cfg, workers):
    """The setting, or by default a quarter of the workers (at least one)."""
    return cfg.oob_concurrency or max(1, workers // 4)


class Coordinator:
    def __init__(self, cfg, log, fleet, clock=time.monotonic):
        self.cfg = cfg
        self.log = log
        self.fleet = fleet
        self.clock = clock
        self.asked_at = {}      # (pid, ask): when the master first saw it (oldest first)
        self.extra_for = {}     # pid whose ask needed an extra worker: when it last did
        self.most_at_once = 0   # the most workers in out-of-band work at once (status)
        self.grants = 0

    # -- what the worker wrote --------------------------------------------------------------

    def ask_of(self, record):
        """The worker's open ask (its number), or 0."""
        counters = self.fleet.counters
        asked = counters.get(record.slot, "oob_asked")
        return asked if asked > counters.get(record.slot, "oob_done") else 0

    def in_work(self, record):
        """Granted, and not done: it runs (or is about to run) its out-of-band work."""
        ask = self.ask_of(record)
        return bool(ask) and self.fleet.counters.get(record.slot, "oob_granted") == ask

    def working_since(self, record):
        """When its out-of-band work began (time.monotonic()), or None."""
        since = self.fleet.counters.get(record.slot, "oob_since_us")
        return since / 1e6 if since else None

    def stats(self, workers):
        return {"oob_concurrency": oob_concurrency(self.cfg, workers),
                "oob_grants": self.grants, "oob_most_at_once": self.most_at_once,
                "oob_extra_workers": len(self.extra_for)}

    # -- the master's turn --------------------------------------------------------------------

    def not_counted(self):
        """Workers over `workers` this policy keeps: one per worker whose ask needed an
        extra, one per disabled worker."""
        return len(self.extra_for) + len(self.disabled())

    def disabled(self):
        return [r for r in self.fleet.worker_records() if r.disabled and not r.outgoing]

    def decide(self, situation):
        # Serving ones: a refork's candidate is leaving for the template (the master's
        # orders must not reach a template), a stopping worker is leaving.
        records = [r for r in self.fleet.worker_records() if r.slot is not None
                   and r.state in (State.SERVING, State.OUTGOING)]
        asking = {r.pid: ask for r in records if (ask := self.ask_of(r))}
        self.asked_at = {key: at for key, at in self.asked_at.items()
                         if asking.get(key[0]) == key[1]}
        for pid, ask in asking.items():
            self.asked_at.setdefault((pid, ask), self.clock())
        yield from self.release_extras(records, asking)
        if situation.halting:
            return
        working = [r for r in records if self.in_work(r)]
        self.most_at_once = max(self.most_at_once, len(working))
        free = oob_concurrency(self.cfg, situation.workers) - len(working)
        waiting = sorted((r for r in records if r.pid in asking and r not in working),
                         key=lambda r: self.asked_at[r.pid, asking[r.pid]])
        for record in waiting:
            if free <= 0:
                return
            if not self.others_serve(record, records, working):
                self.spawn_extra_for(record)
                continue
            free -= 1
            working.append(record)
            self.grants += 1
            yield Grant(record, asking[record.pid])

    def others_serve(self, record, records, working):
        """Whether a worker other than `record` serves (booted, not in out-of-band work,
        not outgoing, not disabled) while `record` does its work."""
        return any(r is not record and r.state is State.SERVING and r.heartbeat_moved()
                   and not r.disabled and r not in working for r in records)

    def spawn_extra_for(self, record):
        if record.pid not in self.extra_for:
            self.extra_for[record.pid] = self.clock()
            self.log.info("Worker (pid: %s) asks for out-of-band work and no other worker "
                          "would serve meanwhile: spawning one first", record.pid)

    def release_extras(self, records, asking):
        """The extra workers of asks done EXTRA_LINGER seconds ago (or of workers gone)
        leave."""
        now = self.clock()
        live = {r.pid for r in records}
        for pid in list(self.extra_for):
            if pid in asking:
                self.extra_for[pid] = now
                continue
            if pid in live and now - self.extra_for[pid] < EXTRA_LINGER:
                continue
            del self.extra_for[pid]
            yield from self.retire_youngest(records, pid, "the out-of-band work of worker "
                                            "%s is done: the worker spawned for it leaves"
                                            % pid)

    def retire_youngest(self, records, keep_pid, why):
        others = [r for r in records if r.pid != keep_pid and r.state is State.SERVING
                  and not r.disabled]
        if others:
            yield Replace(max(others, key=lambda r: r.worker.age), why)

    # -- the operator: worker disable / enable ---------------------------------------------

    def disable(self, record):
        """Take `record` out of rotation (the arbiter writes its slot and wakes it)."""
        record.disabled = True

    def enable(self, record):
        record.disabled = False
        records = [r for r in self.fleet.worker_records() if r.slot is not None]
        yield from self.retire_youngest(records, record.pid, "worker %s is enabled again: "
                                        "the worker spawned in its place leaves" % record.pid)
