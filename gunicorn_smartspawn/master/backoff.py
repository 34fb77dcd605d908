"""Waits that grow with each failure in a row, for everything the master retries.

A preloader that keeps exiting, a refork refused by a prevent_fork() block, workers that
exit before they ever serve: each waits longer after each failure in a row, and a
success starts the row over.
"""
import time


class Backoff:
    """`delays[i]`: the seconds to wait after the (i+1)-th failure in a row; the last one
    repeats. `clock`: a monotonic clock (a fake one in tests)."""

    def __init__(self, delays, clock=time.monotonic):
        self.delays = tuple(delays)
        self.clock = clock
        self.failures = 0
        self.until = 0.0

    def failed(self, count=1):
        """Record `count` more failures; returns the wait they call for (seconds)."""
        self.failures += count
        delay = self.delays[min(self.failures, len(self.delays)) - 1]
        self.until = self.clock() + delay
        return delay

    def succeeded(self):
        self.failures = 0
        self.until = 0.0

    def waiting(self):
        """True until the last failure's wait is over."""
        return self.clock() < self.until
