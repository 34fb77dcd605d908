"""The signal dispositions the application installs at import, given to every worker.

A gunicorn worker (without --preload) runs its init_signals() and then imports the app
(load_wsgi): whatever the import installs wins in that worker, over gunicorn's own
handlers (a TERM that flushes a buffer, a custom USR1) and over the defaults (SIGCHLD
ignored, "no zombies from my subprocesses"). With smart spawning the import runs once, in
the preloader, which must keep its own dispositions to fork: with SIGCHLD ignored (or
reaped by the app's handler) the kernel takes the double fork's middle process before the
spawner's waitpid. So:

- during the import, the preloader has what a gunicorn worker has then: gunicorn's worker
  handlers, as `GunicornHandler`s that, once the process is a worker, call what that
  worker had (an app that chains to the handler it replaced reaches the worker's, as
  under gunicorn);
- after it, `record()` keeps what the import changed and the preloader takes its own
  dispositions back;
- each worker re-applies them where gunicorn's worker would import the app: first thing
  in load_wsgi, after gunicorn's init_signals (`AppSignals.apply`).

Two things the import may set that signal.getsignal does not show are kept too: the
handlers of faulthandler.register() (C-level: recorded from its calls) and interval
timers (setitimer: a fork does not carry them, and the preloader, which must not get the
ticks, disarms them; each worker arms them again). A C extension's own sigaction is not
seen: inherited by the fork and replaced by init_signals, as with --preload.
"""
import contextlib
import faulthandler
import os
import signal

# The signals gunicorn's Worker.init_signals() gives a handler of its own, that a worker
# has when it imports the app (tests/unit/test_appsignals.py checks this against gunicorn).
GUNICORN_SIGNALS = frozenset({signal.SIGQUIT, signal.SIGTERM, signal.SIGINT,
                              signal.SIGWINCH, signal.SIGUSR1, signal.SIGABRT})

# In a worker: its dispositions where it would have imported the app (AppSignals.apply).
worker_dispositions = None

TIMERS = (signal.ITIMER_REAL, signal.ITIMER_VIRTUAL, signal.ITIMER_PROF)


class GunicornHandler:
    """gunicorn's handler for `signum`, for the app to see and chain to at import.

    In a worker it does what the worker had for `signum` before the app's dispositions
    were applied (gunicorn's, or the event-loop worker's); in the spawner, where the
    import runs, what the spawner's own disposition (`fallback`) does. It acts for
    `signum` whichever signal it is installed for, as gunicorn's bound method would.
    """

    def __init__(self, signum, fallback):
        self.signum = signum
        self.fallback = fallback

    def __call__(self, sig, frame):
        target = self.fallback
        if worker_dispositions is not None:
            target = worker_dispositions.get(self.signum, signal.SIG_DFL)
        if callable(target):
            return target(sig, frame)
        if target == signal.SIG_DFL:  # the default action: stop (or dump core) now
            signal.signal(self.signum, signal.SIG_DFL)
            os.kill(os.getpid(), self.signum)
        return None

    def __repr__(self):
        return "<gunicorn worker's handler for %s>" % signal_name(self.signum)


def dispositions():
    """{signal: handler} of every signal whose handler Python knows."""
    found = {}
    for sig in signal.valid_signals():
        try:
            handler = signal.getsignal(sig)
        except (ValueError, OSError):
            continue
        if handler is not None:  # None: set outside Python, nothing we can restore
            found[sig] = handler
    return found


def signal_name(sig):
    try:
        return signal.Signals(sig).name
    except ValueError:  # a real-time signal between SIGRTMIN and SIGRTMAX
        return "SIGRTMIN+%d" % (sig - signal.SIGRTMIN)


def changes(before, after):
    """{signal: handler} of what differs in `after` from `before`."""
    return {sig: handler for sig, handler in after.items() if before.get(sig) != handler}


def armed_timers():
    """{timer: (value, interval)} of the interval timers armed in this process."""
    return {which: signal.getitimer(which) for which in TIMERS if signal.getitimer(which)[0]}


def new_timers(before):
    """The timers armed since `before` (armed_timers()): not armed then, or re-armed with
    another interval. (A timer counts down: its value alone says nothing.)"""
    return {which: setting for which, setting in armed_timers().items()
            if which not in before or before[which][1] != setting[1]}


@contextlib.contextmanager
def faulthandler_registrations():
    """Within: faulthandler.register() also appends its arguments to the list it yields."""
    calls, register = [], faulthandler.register

    def recording(signum, *args, **kwargs):
        register(signum, *args, **kwargs)
        if faulthandler.register is recording:  # a reference kept past the import
            calls.append((signum, args, kwargs))
    faulthandler.register = recording
    try:
        yield calls
    finally:
        faulthandler.register = register


class AppSignals:
    """What the app's import changed: {signal: handler}, its faulthandler registrations
    and its armed interval timers; applied in every worker."""

    def __init__(self, changed, faults=(), timers=None):
        self.changed = changed
        self.faults = list(faults)
        self.timers = timers or {}

    def __bool__(self):
        return bool(self.changed or self.faults or self.timers)

    def touched(self):
        """The signals whose disposition the import changed, or registered with
        faulthandler."""
        return set(self.changed) | {sig for sig, _, _ in self.faults}

    def names(self):
        timer_names = {signal.ITIMER_REAL: "ITIMER_REAL", signal.ITIMER_VIRTUAL: "ITIMER_VIRTUAL",
                       signal.ITIMER_PROF: "ITIMER_PROF"}
        return ", ".join([signal_name(sig) for sig in sorted(self.changed)]
                         + ["%s (faulthandler)" % signal_name(sig) for sig, _, _ in self.faults]
                         + [timer_names[which] + " (interval timer)" for which in self.timers])

    def apply(self, keep=()):
        """In a worker after gunicorn's init_signals: the app's dispositions on top.

        `keep`: signals smartspawn needs for itself in this worker (URG with fork_worker).
        """
        global worker_dispositions
        worker_dispositions = dispositions()
        for sig, handler in self.changed.items():
            if sig not in keep:
                signal.signal(sig, handler)
        for signum, args, kwargs in self.faults:
            if signum not in keep:
                faulthandler.register(signum, *args, **kwargs)
        for which, (value, interval) in self.timers.items():
            signal.setitimer(which, value, interval)


def record(load):
    """Run `load` (the app's import) as a gunicorn worker would, then take this
    process's own dispositions back; returns what the import changed (AppSignals)."""
    own = dispositions()
    for sig in GUNICORN_SIGNALS:
        signal.signal(sig, GunicornHandler(sig, own.get(sig, signal.SIG_DFL)))
    before, timers_before = dispositions(), armed_timers()
    try:
        with faulthandler_registrations() as faults:
            load()
    finally:
        after = dispositions()
        changed = changes(before, after)
        timers = new_timers(timers_before)
        for which in timers:
            signal.setitimer(which, 0)  # its ticks are for the workers
        for signum, _, _ in faults:
            faulthandler.unregister(signum)
        for sig in set(changed) | GUNICORN_SIGNALS:
            if sig in own:
                signal.signal(sig, own[sig])
    return AppSignals(changed, faults, timers)


def record_in_worker(load, may_fork):
    """Run `load` (the app's import) in a worker that imports the app itself; returns
    what it changed. `may_fork`: the worker may become a template (fork_worker), whose
    children get what it records: what the app chains to must then be a stand-in, which
    calls each child's own handler, not this worker's."""
    global worker_dispositions
    worker_dispositions = own = dispositions()
    if may_fork:
        for sig in GUNICORN_SIGNALS:
            if callable(own.get(sig)):
                signal.signal(sig, GunicornHandler(sig, own[sig]))
    before, timers_before = dispositions(), armed_timers()
    with faulthandler_registrations() as faults:
        load()
    return AppSignals(changes(before, dispositions()), faults, new_timers(timers_before))
