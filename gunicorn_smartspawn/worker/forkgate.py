"""Fork gates: the application says when its worker must not be forked.

A refork turns a serving worker into the template and forks every new worker from it.
Two calls let the application keep that from happening at a bad moment:

- ``smartspawn.prevent_fork()``: a context manager held around work a fork must not cut
  in the middle (a temporary thread, a connection being set up). A worker about to
  become the template waits until no such block is running, at most `graceful_timeout`
  seconds; past that it gives up and the master retries the refork later.
- ``smartspawn.no_longer_fork_safe()``: the calling worker did something that makes
  forking it unsafe for good (a thread it cannot stop, say): it never becomes the
  template. Called at import time, in the preloader, it marks every worker.
"""
import contextlib
import os
import threading
from collections.abc import Iterator

_gate = threading.Condition()
_held = 0              # prevent_fork() blocks running in this process
_fork_safe = True
_publish_unsafe = None  # set by a worker: tells the master (counters.py)


@contextlib.contextmanager
def prevent_fork() -> Iterator[None]:
    """Keep this process from being forked while the block runs (see the module doc)."""
    global _held
    with _gate:
        _held += 1
    try:
        yield
    finally:
        with _gate:
            _held -= 1
            _gate.notify_all()


def no_longer_fork_safe() -> None:
    """Never make this worker the template (see the module doc)."""
    global _fork_safe
    _fork_safe = False
    if _publish_unsafe is not None:
        _publish_unsafe()


def fork_safe():
    return _fork_safe


def on_unsafe(publish):
    """Call `publish()` now if this process is already marked, and whenever it is."""
    global _publish_unsafe
    _publish_unsafe = publish
    if not _fork_safe:
        publish()


def wait_until_forkable(timeout):
    """Wait until no prevent_fork() block runs; False if one still does after `timeout`."""
    with _gate:
        return _gate.wait_for(lambda: _held == 0, timeout)


def _after_fork_in_child():
    # Only the forking thread exists in the child: no block runs, and the lock may have
    # been held by a thread that is gone.
    global _gate, _held, _publish_unsafe
    _gate = threading.Condition()
    _held = 0
    _publish_unsafe = None


os.register_at_fork(after_in_child=_after_fork_in_child)
