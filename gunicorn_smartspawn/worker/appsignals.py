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

Only dispositions set from Python are seen (signal.getsignal); a C extension's
sigaction is inherited by the fork and replaced by init_signals, as with --preload.
"""
import os
import signal

# The signals gunicorn's Worker.init_signals() gives a handler of its own, that a worker
# has when it imports the app (tests/unit/test_appsignals.py checks this against gunicorn).
GUNICORN_SIGNALS = frozenset({signal.SIGQUIT, signal.SIGTERM, signal.SIGINT,
                              signal.SIGWINCH, signal.SIGUSR1, signal.SIGABRT})

# In a worker: its dispositions where it would have imported the app (AppSignals.apply).
worker_dispositions = None


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


class AppSignals:
    """What the app's import changed: {signal: handler}, applied in every worker."""

    def __init__(self, changed):
        self.changed = changed

    def __bool__(self):
        return bool(self.changed)

    def names(self):
        return ", ".join(signal_name(sig) for sig in sorted(self.changed))

    def apply(self, keep=()):
        """In a worker after gunicorn's init_signals: the app's dispositions on top.

        `keep`: signals smartspawn needs for itself in this worker (URG with fork_worker).
        """
        global worker_dispositions
        worker_dispositions = dispositions()
        for sig, handler in self.changed.items():
            if sig not in keep:
                signal.signal(sig, handler)


def record(load):
    """Run `load` (the app's import) as a gunicorn worker would, then take this
    process's own dispositions back; returns what the import changed (AppSignals)."""
    own = dispositions()
    for sig in GUNICORN_SIGNALS:
        signal.signal(sig, GunicornHandler(sig, own.get(sig, signal.SIG_DFL)))
    before = dispositions()
    try:
        load()
    finally:
        after = dispositions()
        changed = changes(before, after)
        for sig in set(changed) | GUNICORN_SIGNALS:
            if sig in own:
                signal.signal(sig, own[sig])
    return AppSignals(changed)


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
    before = dispositions()
    load()
    return AppSignals(changes(before, dispositions()))
