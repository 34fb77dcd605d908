"""Out-of-band work as Passenger coordinates it, and workers the operator takes out of
rotation: the master's side (the worker's is worker/oob.py).

A worker that wants costly out-of-band work (worker/oob.py says which) asks, in its slot
of the counters (`oob_asked` past `oob_done`). The master grants at most `oob_concurrency`
asks at once (never all the workers), the oldest first, by writing the ask's number to
`oob_granted` and waking the worker (SIG_COMMAND). So capacity never collapses because
every worker collects at once. A grant not begun within GRANT_START_LIMIT is taken back.

Passenger: "if the process that triggered out-of-band work is the only process, Passenger
first spawns a new process before performing the work". Here: when no other worker would
serve meanwhile (`workers = 1`, or the others are outgoing or disabled; one still booting
will serve), the master asks for one worker over `workers` (one at a time) and grants
once it serves; once the worker it was spawned for is done (with `workers = 1`, has asked
for no more for EXTRA_LINGER seconds), or a third worker serves, the extra worker is
replaced away (it serves until then).

`worker disable PID` (the control socket) marks the worker's record and slot: the worker
stops accepting, finishes its requests and stays alive; it does not count toward
`workers`, so the master spawns one more; `worker enable PID` counts it again and the
youngest other worker leaves.
"""
import dataclasses
import itertools
import time

from gunicorn_smartspawn.master.actions import Replace
from gunicorn_smartspawn.master.fleet import State

# Seconds an extra worker stays after the out-of-band work it was spawned for: a lone
# worker under load asks again within a few requests (oob_gc), and would otherwise have a
# worker spawned and stopped around each collection (Passenger keeps its extra process
# until the pool's idle timeout).
EXTRA_LINGER = 10.0
# Seconds a granted worker has to begin its work: longer than a concurrent worker holds
# new requests for (oob.HOLD_LIMIT). A sync worker granted in a long request, or one whose
# long request (a stream, a long poll) keeps it from ever being idle, gives its turn back
# to the next worker and asks again.
GRANT_START_LIMIT = 1.0


@dataclasses.dataclass(frozen=True)
class Grant:
    """Grant the worker's ask `ask`: write it to its slot and wake it (SIG_COMMAND)."""
    record: object
    ask: int


@dataclasses.dataclass(frozen=True)
class Revoke:
    """Take back a grant the worker has not begun within GRANT_START_LIMIT."""
    record: object


@dataclasses.dataclass
class Extra:
    """The one worker over `workers` spawned for a worker that would be alone."""
    for_pid: int
    needed_at: float       # when its worker last asked (it leaves EXTRA_LINGER after)
    after_age: int         # the youngest worker's age when it was asked for


def oob_concurrency(cfg, workers):
    """The setting, or by default a quarter of the workers; at least 1, and below
    `workers` so that a worker always serves while others work (with `workers = 1`, the
    extra worker spawned first)."""
    wanted = cfg.oob_concurrency or workers // 4
    return max(1, min(wanted, workers - 1))


def in_rotation(record):
    """Checked in and not taken out by the operator (it may not have served yet)."""
    return record.state is State.SERVING and not record.disabled


class Coordinator:
    def __init__(self, cfg, log, fleet, clock=time.monotonic):
        self.cfg = cfg
        self.log = log
        self.fleet = fleet
        self.clock = clock
        self.queued = {}        # (pid, ask): its place in the queue (lowest first)
        self.places = itertools.count()
        self.granted_at = {}    # (pid, ask): when it was granted
        self.extra = None       # the Extra, while there is one
        # A worker waits for another to serve first (the extra one booting): nothing
        # wakes the master when that one's heartbeat moves, so it looks again soon.
        self.waiting_for_another = False
        self.most_at_once = 0   # the most workers in out-of-band work at once (status)
        self.grants = 0

    # -- what the worker wrote --------------------------------------------------------------

    def ask_of(self, record):
        """The worker's open ask (its number), or 0."""
        counters = self.fleet.counters
        asked = counters.get(record.slot, "oob_asked")
        return asked if asked > counters.get(record.slot, "oob_done") else 0

    def in_work(self, record):
        """Granted and not done, or begun (a grant taken back as it began still runs)."""
        counters = self.fleet.counters
        ask = self.ask_of(record)
        return bool(ask) and (counters.get(record.slot, "oob_granted") == ask
                              or counters.get(record.slot, "oob_since_us") != 0)

    def stats(self, workers):
        return {"oob_concurrency": oob_concurrency(self.cfg, workers),
                "oob_grants": self.grants, "oob_most_at_once": self.most_at_once,
                "oob_extra_workers": int(self.extra is not None)}

    # -- the master's turn --------------------------------------------------------------------

    def not_counted(self):
        """Workers over `workers` this policy keeps: the extra one, the disabled ones."""
        return int(self.extra is not None) + len(self.disabled())

    def disabled(self):
        return [r for r in self.fleet.worker_records() if r.disabled and not r.outgoing]

    def decide(self, situation):
        # Serving ones: a refork's candidate is leaving for the template (the master's
        # orders must not reach a template), a stopping worker is leaving.
        records = [r for r in self.fleet.worker_records() if r.slot is not None
                   and r.state in (State.SERVING, State.OUTGOING)]
        asking = {r.pid: ask for r in records if (ask := self.ask_of(r))}
        now = self.clock()
        self.queued = {key: place for key, place in self.queued.items()
                       if asking.get(key[0]) == key[1]}
        self.granted_at = {key: at for key, at in self.granted_at.items()
                           if asking.get(key[0]) == key[1]}
        for pid, ask in asking.items():
            if (pid, ask) not in self.queued:
                self.queued[pid, ask] = next(self.places)
        self.waiting_for_another = False
        yield from self.release_extra(records, asking, situation)
        if situation.halting:
            return
        yield from self.revoke_unbegun(records, asking, now)
        working = [r for r in records if self.in_work(r)]
        self.most_at_once = max(self.most_at_once, len(working))
        free = oob_concurrency(self.cfg, situation.workers) - len(working)
        waiting = sorted((r for r in records if r.pid in asking and r not in working),
                         key=lambda r: self.queued[r.pid, asking[r.pid]])
        for record in waiting:
            if free <= 0:
                return
            if not self.others_serve(record, records, working):
                self.waiting_for_another = True
                if not self.others_booting(record, records, working):
                    self.spawn_extra_for(record, records)
                continue
            free -= 1
            working.append(record)
            self.grants += 1
            self.granted_at[record.pid, asking[record.pid]] = now
            yield Grant(record, asking[record.pid])

    def revoke_unbegun(self, records, asking, now):
        counters = self.fleet.counters
        for record in records:
            key = (record.pid, asking.get(record.pid))
            if (key in self.granted_at and now - self.granted_at[key] > GRANT_START_LIMIT
                    and not counters.get(record.slot, "oob_since_us")):
                del self.granted_at[key]
                self.queued[key] = next(self.places)  # to the back of the queue
                self.log.debug("Worker (pid: %s) did not begin its out-of-band work within "
                               "%.1fs (a request in flight): its turn goes to the next",
                               record.pid, GRANT_START_LIMIT)
                yield Revoke(record)

    def others_serve(self, record, records, working):
        """Whether a worker other than `record` serves (booted, not in out-of-band work,
        not outgoing, not disabled) while `record` does its work."""
        return any(r is not record and in_rotation(r) and r.heartbeat_moved()
                   and r not in working for r in records)

    def others_booting(self, record, records, working):
        """Whether a worker other than `record` will serve in a moment: checked in, its
        heartbeat not moved yet (the second worker as a server starts)."""
        return any(r is not record and in_rotation(r) and not r.heartbeat_moved()
                   and r not in working for r in records)

    def spawn_extra_for(self, record, records):
        if self.extra is not None:
            return  # one at a time: it serves for whoever asks next
        self.extra = Extra(record.pid, self.clock(),
                           max((r.worker.age for r in records), default=0))
        self.log.info("Worker (pid: %s) asks for out-of-band work and no other worker "
                      "would serve meanwhile: spawning one first", record.pid)

    def release_extra(self, records, asking, situation):
        """The extra worker stays while its worker asks and no third worker serves, and
        with `workers = 1` for EXTRA_LINGER seconds after its worker's last ask; then it
        leaves, once it serves (until then it is counted over `workers`, or the master
        would stop the oldest worker in its place). When its worker is gone, it simply
        takes that one's place."""
        extra = self.extra
        if extra is None:
            return
        now = self.clock()
        live = {r.pid for r in records}
        if extra.for_pid not in live:
            self.extra = None
            return
        if extra.for_pid in asking:
            extra.needed_at = now
        spawned = [r for r in records if r.worker.age > extra.after_age and in_rotation(r)]
        extra_record = spawned[0] if spawned else None
        another_serves = any(r.pid != extra.for_pid and r is not extra_record
                             and in_rotation(r) and r.heartbeat_moved()
                             and not self.in_work(r) for r in records)
        lingering = situation.workers == 1 and now - extra.needed_at < EXTRA_LINGER
        if (extra.for_pid in asking or lingering) and not another_serves:
            return
        if extra_record is None:
            return  # not serving yet: it leaves once it does
        self.extra = None
        why = ("the out-of-band work of worker %s is done: the worker spawned for it "
               "leaves" % extra.for_pid)
        self.log.info("Worker (pid: %s): %s", extra_record.pid, why)
        yield Replace(extra_record, why)

    # -- the operator: worker disable / enable ---------------------------------------------

    def disable(self, record):
        """Take `record` out of rotation (the arbiter writes its slot and wakes it)."""
        record.disabled = True

    def enable(self, record):
        """Count `record` again: the youngest other worker, the one spawned in its place
        (or one as good), leaves."""
        record.disabled = False
        others = [r for r in self.fleet.worker_records() if r is not record
                  and in_rotation(r)]
        if others:
            yield Replace(max(others, key=lambda r: r.worker.age),
                          "worker %s is enabled again: the worker spawned in its place "
                          "leaves" % record.pid)
