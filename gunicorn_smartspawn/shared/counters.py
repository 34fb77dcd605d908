"""Per-worker counters the master can read without asking: a shared anonymous mapping.

The master creates the table before its first fork, so the preloader, every template and
every worker inherit the same pages (MAP_SHARED). Each worker owns one slot, given by the
master at spawn, and writes its own figures there; the master reads them (to decide when
to refork, for `smartspawn status` and the control socket). Each field is one aligned
8-byte store with a single writer: no lock is needed for a reader that wants a recent
value.
"""
import mmap

SLOTS = 1024
# retire: 1 once the worker reached max_requests and waits to be replaced (lifecycle.py);
# fork_unsafe: 1 once it called smartspawn.no_longer_fork_safe() (forkgate.py);
# busy_since_us: when the sync worker's last request began (time.monotonic(), in
# microseconds): that request is in flight while it is past last_request_us; the master
# prefers a refork candidate that is not in a long request (refork.py);
# in_flight: the requests the worker has begun and not finished (every worker class but
# sync, see busy_since_us; gthread's threads take a lock to change it, worker/base.py);
# last_request_us: when the worker last finished a request (time.monotonic(), in
# microseconds; 0 before the first), for `smartspawn status`;
# Out-of-band work coordinated by the master (worker/oob.py, master/outofband.py):
# oob_asked: the worker's asks so far; oob_done: the last ask it finished (or gave up: the
# collection was no longer due); oob_since_us: when its granted work began (0 when none
# runs). Master-written: oob_granted, the last ask it granted; disabled: 1 while the
# operator has taken the worker out of rotation (`worker disable PID`).
# soft_deadline_us, soft_began_us: the earliest soft deadline among the worker's requests
# in flight not yet reported, and when that request began (time.monotonic(), in
# microseconds; 0: none, or soft_timeout is off), written by the worker (deadline.py);
# soft_timeouts: the soft timeouts the master reported for this worker, written by the
# master before it sends SIG_DUMP (master/watchdog.py): the worker's handler sees it move.
FIELDS = ("requests", "oob_collections", "oob_microseconds", "retire", "fork_unsafe",
          "busy_since_us", "in_flight", "last_request_us", "oob_asked", "oob_done",
          "oob_since_us", "oob_granted", "disabled", "soft_deadline_us", "soft_began_us",
          "soft_timeouts")
# The fields that only grow: their sums over the workers that have exited are kept
# (`departed`), so that a server-wide total never goes down when a worker exits.
TOTALS = ("requests", "oob_collections", "oob_microseconds")


class Counters:
    def __init__(self, slots=SLOTS):
        # A slot's fields side by side, padded to whole 64-byte cache lines: a request
        # writes its worker's in one place, not on one page per field, and two workers on
        # two CPUs never write the same cache line.
        width = -(-len(FIELDS) // 8) * 8
        self._map = mmap.mmap(-1, slots * 8 * width)  # anonymous, MAP_SHARED
        table = memoryview(self._map).cast("Q")
        self._fields = {name: table[i::width] for i, name in enumerate(FIELDS)}
        self._free = list(range(slots - 1, -1, -1))
        self.departed = dict.fromkeys(TOTALS, 0)

    def allocate(self):
        """A free slot, zeroed; None when all are taken (that worker is not counted)."""
        if not self._free:
            return None
        slot = self._free.pop()
        for values in self._fields.values():
            values[slot] = 0
        return slot

    def release(self, slot):
        """Free `slot` (its worker has exited), adding its totals to `departed`."""
        if slot is not None:
            for name in TOTALS:
                self.departed[name] += self._fields[name][slot]
            self._free.append(slot)

    def get(self, slot, field):
        return 0 if slot is None else self._fields[field][slot]

    def set(self, slot, field, value):
        self._fields[field][slot] = value

    def columns(self):
        """{field: its column}, written in place as `column[slot] = value`: the sync
        worker's request path (worker/base.py), where a call per field is measurable."""
        return self._fields

    def requests(self, slot):
        return self.get(slot, "requests")

    def snapshot(self, slot):
        return {name: self.get(slot, name) for name in FIELDS}
