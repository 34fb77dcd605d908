"""The master's table of workers: what gunicorn's WORKERS does not hold.

gunicorn's ``WORKERS`` (pid -> worker) stays the one list of live workers: its reaper,
its timeouts and its signals work on it unchanged. The table holds the rest:

- ``pending``: workers asked of a spawner that have not checked in (age -> worker). A
  spawner forks one worker after another, so each gets one request at a time: the others
  wait queued here, and each spawn is timed (SPAWN_TIMEOUT) from when it was sent;
- ``records``: every worker that holds a counter slot or a channel, until gunicorn has
  forgotten it (its slot is then freed and its channel closed);
- ``counters``: the per-worker counters shared with the workers (counters.py);
- ``seats``: with reuse_port, the listening sockets of each worker, bound by the master.
  The master keeps its copy: when a worker is replaced (a HUP, a recycle, a refork) its
  replacement is given the same sockets while the old one still serves, so the
  connections queued on them are served instead of being reset by the kernel when the
  last copy is closed (plain gunicorn's reuse_port loses them at every HUP). A seat no
  worker holds is closed at once: nobody would accept what the kernel queues there.
"""
import itertools
import time

from gunicorn_smartspawn.counters import Counters

# How long a spawn request may go unanswered before its spawner is deemed stuck.
SPAWN_TIMEOUT = 5.0


class WorkerTable:
    def __init__(self, workers):
        self.workers = workers  # gunicorn's WORKERS
        self.pending = {}
        self.records = {}
        self.counters = Counters()  # inherited by every process forked from here on
        self.seats = {}             # reuse_port: seat number -> its listening sockets
        self.seat_numbers = itertools.count()

    # -- spawns ---------------------------------------------------------------------------

    def queue(self, worker):
        worker.spawn_requested = time.monotonic()
        worker.spawn_deadline = None  # not sent yet
        self.pending[worker.age] = worker

    def to_send(self):
        """The queued workers to send now: each spawner's oldest, when it has none in flight."""
        in_flight = {w.spawner_pid for w in self.pending.values() if w.spawn_deadline}
        out = []
        for _age, worker in sorted(self.pending.items()):
            if worker.spawn_deadline is None and worker.spawner_pid not in in_flight:
                in_flight.add(worker.spawner_pid)
                out.append(worker)
        return out

    @staticmethod
    def sent(worker):
        worker.spawn_deadline = time.monotonic() + SPAWN_TIMEOUT

    def overdue(self, now):
        return [w for w in self.pending.values() if w.spawn_deadline and now > w.spawn_deadline]

    def drop_queued(self, spawner_pid):
        """Forget the requests queued for `spawner_pid` and not sent: it is retired, and
        manage_workers asks the next spawner instead."""
        for worker in self.pending_of(spawner_pid):
            if worker.spawn_deadline is None:
                self.forget_pending(worker.age)

    def drop_all_queued(self):
        for worker in list(self.pending.values()):
            if worker.spawn_deadline is None:
                self.forget_pending(worker.age)

    def pending_of(self, spawner_pid):
        return [w for w in self.pending.values() if w.spawner_pid == spawner_pid]

    def busy_spawners(self):
        return {w.spawner_pid for w in self.pending.values()}

    def checked_in(self, age, pid):
        """Pending worker `age` is process `pid`: it is live now. None if it was given up."""
        worker = self.pending.pop(age, None)
        if worker is not None:
            self.add(worker, pid)
        return worker

    def add(self, worker, pid):
        worker.pid = pid
        self.workers[pid] = self.records[pid] = worker

    def forget_pending(self, age):
        worker = self.pending.pop(age, None)
        if worker is not None:
            worker.tmp.close()
            self.release(worker)

    # -- reuse_port seats ---------------------------------------------------------------

    def seat_for(self, worker, outgoing, make):
        """Give `worker` a seat no serving worker keeps: one an outgoing or departed worker
        leaves, else a new one, `make()` (its listening sockets)."""
        kept = {w.seat for w in (*self.workers.values(), *self.pending.values())
                if w is not worker and w.pid not in outgoing}
        free = [number for number in self.seats if number not in kept]
        if free:
            worker.seat = free[0]
        else:
            worker.seat = next(self.seat_numbers)
            self.seats[worker.seat] = make()
        return self.seats[worker.seat]

    def close_seats(self):
        """At shutdown (and in a child of the master): the port is released as the
        workers exit, as in gunicorn."""
        for seat in self.seats.values():
            for listener in seat:
                listener.close()
        self.seats = {}

    def close_unused_seats(self):
        """Close the seats no worker holds (or is being given): else the kernel would go
        on queueing connections there that nobody accepts (TTOU, a worker that died while
        no spawner can replace it)."""
        held = {w.seat for w in (*self.workers.values(), *self.pending.values())}
        for number in [number for number in self.seats if number not in held]:
            for listener in self.seats.pop(number):
                listener.close()

    # -- slots and channels ---------------------------------------------------------------

    def release_departed(self):
        """Free the slot and channel of every worker gunicorn has forgotten."""
        for pid in [pid for pid in self.records if pid not in self.workers]:
            self.release(self.records.pop(pid))

    def release(self, worker):
        self.counters.release(worker.slot)
        worker.slot = None
        if worker.channel is not None:
            worker.channel.close()
            worker.channel = None

    def close_in_child(self):
        """In a child forked from the master: close every worker's heartbeat and channel,
        through their objects (so that nothing closes the numbers again later)."""
        every = {id(w): w for w in (*self.records.values(), *self.workers.values(),
                                    *self.pending.values())}
        for worker in every.values():
            worker.tmp.close()
            if worker.channel is not None:
                worker.channel.close()
        self.close_seats()
