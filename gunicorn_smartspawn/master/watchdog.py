"""The master's watch over requests past their soft deadline (`soft_timeout`).

Each worker publishes the earliest soft deadline of its requests in flight that was not
reported yet (``soft_deadline_us``, worker/deadline.py). Each turn the master looks;
a deadline that has passed is reported once: the arbiter logs one warning, adds one to
the worker's ``soft_timeouts`` and sends it SIG_DUMP. The worker then writes its stacks,
runs ``on_soft_timeout`` and publishes its next deadline, if any.
"""
import dataclasses
import time


@dataclasses.dataclass(frozen=True)
class SoftTimeout:
    record: object   # the worker's ChildRecord (fleet.py)
    ran: float       # seconds the request has run


class Watchdog:
    def __init__(self, counters, clock=time.monotonic):
        self.counters = counters
        self.clock = clock
        self.reported = {}  # pid -> the soft_deadline_us last reported

    def overdue(self, records):
        """The workers in `records` whose published soft deadline has passed and was
        not reported yet; each is taken as reported."""
        now_us = int(self.clock() * 1e6)
        found = []
        for record in records:
            deadline = self.counters.get(record.slot, "soft_deadline_us")
            began = self.counters.get(record.slot, "soft_began_us")
            if not deadline or deadline > now_us or self.reported.get(record.pid) == deadline:
                continue
            self.reported[record.pid] = deadline
            found.append(SoftTimeout(record, (now_us - began) / 1e6 if began else 0.0))
        live = {record.pid for record in records}
        for pid in set(self.reported) - live:
            del self.reported[pid]
        return found
