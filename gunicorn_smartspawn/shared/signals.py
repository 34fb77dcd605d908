"""The signals smartspawn's master sends its workers, beyond gunicorn's own.

Realtime signals: gunicorn, terminals and the kernel give them no meaning, web applications
and their libraries leave them alone (so taking them changes nothing an app can see), and
each one sent is delivered (they are queued, not merged).
"""
import faulthandler
import signal

# Master -> worker: write the Python stack of every thread to the error log. faulthandler's
# C-level handler does it (worker/deadline.py), so a worker stuck in C code dumps too.
SIG_DUMP = signal.SIGRTMIN + 4

# Master -> worker: "read your orders": the master wrote to the worker's slot in the
# counters table (an out-of-band grant, disable / enable) and wakes it to read them.
SIG_COMMAND = signal.SIGRTMIN + 5


def ignore_ours():
    """SIG_DUMP and SIG_COMMAND do nothing in this process (the master, a spawner), nor in
    a worker forked from it until the worker takes them (worker/deadline.py,
    SmartWorkerMixin.init_signals): a signal sent to a worker still booting must not end
    it (a realtime signal's default). A handler, not SIG_IGN, which would pass into every
    program the app runs (it survives exec)."""
    faulthandler.unregister(SIG_DUMP)  # a template was a worker: its children dump anew
    signal.signal(SIG_DUMP, _ignored)
    signal.signal(SIG_COMMAND, _ignored)


def _ignored(_signum, _frame):
    pass
