"""The signals smartspawn's master sends its workers, beyond gunicorn's own.

Realtime signals: no web application or library we know of uses them, so taking them
changes nothing an app can see (the app cannot tell), and unlike SIGUSR2 or SIGWINCH
none has a meaning to gunicorn or to a terminal.
"""
import signal

# "Read your orders": the master wrote to the worker's slot in the counters table (an
# out-of-band grant, disable / enable) and wakes it to read them.
SIG_COMMAND = signal.SIGRTMIN + 5
