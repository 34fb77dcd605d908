"""Per-worker counters the master can read without asking: a shared anonymous mapping.

The master creates the table before its first fork, so the preloader, every template and
every worker inherit the same pages (MAP_SHARED). Each worker owns one slot, given by the
master at spawn, and writes its request count there after each request; the master reads
it to decide when to refork. One aligned 8-byte store: no lock needed for a reader that
only wants a recent value.
"""
import mmap

SLOTS = 1024


class Counters:
    def __init__(self, slots=SLOTS):
        self._map = mmap.mmap(-1, slots * 8)  # anonymous, MAP_SHARED
        self._requests = memoryview(self._map).cast("Q")
        self._free = list(range(slots - 1, -1, -1))

    def allocate(self):
        """A free slot, zeroed; None when all are taken (that worker is not counted)."""
        if not self._free:
            return None
        slot = self._free.pop()
        self._requests[slot] = 0
        return slot

    def release(self, slot):
        if slot is not None:
            self._free.append(slot)

    def requests(self, slot):
        return 0 if slot is None else self._requests[slot]

    def set_requests(self, slot, value):
        self._requests[slot] = value
