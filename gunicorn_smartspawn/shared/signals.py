"""The signals smartspawn adds to gunicorn's, between its processes.

Realtime signals: gunicorn and the kernel give them no meaning, applications leave them
alone, and each one sent is delivered (they are queued, not merged).
"""
import faulthandler
import signal

# Master -> worker: write the Python stack of every thread to the error log. faulthandler's
# C-level handler does it (worker/deadline.py), so a worker stuck in C code dumps too.
SIG_DUMP = signal.SIGRTMIN + 4


def ignore_dumps():
    """SIG_DUMP does nothing in this process (the master, a spawner), nor in a worker
    forked from it until the worker takes it (worker/deadline.py): a dump asked of a
    worker still booting must not end it (a realtime signal's default). A handler, not
    SIG_IGN, which would pass into every program the app runs (it survives exec)."""
    faulthandler.unregister(SIG_DUMP)  # a template was a worker: its children dump anew
    signal.signal(SIG_DUMP, _ignored)


def _ignored(_signum, _frame):
    pass
