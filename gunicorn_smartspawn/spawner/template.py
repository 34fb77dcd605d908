"""The template: a warmed worker that stopped serving to fork the next generation.

After SIGURG (with a BecomeTemplate message on its channel) a worker finishes its
in-flight requests, leaves gunicorn's serving loop and lands here: it runs the
`pre_template_fork` hook, collects and freezes its heap (so that caches and lazy imports
filled while serving are shared by every worker forked from it), then serves spawn
requests exactly like the preloader (see spawner.py).
"""
import signal
import time

from gunicorn import util

from gunicorn_smartspawn import forksafety
from gunicorn_smartspawn.shared import protocol
from gunicorn_smartspawn.worker import forkgate
from gunicorn_smartspawn.spawner.base import Spawner
from gunicorn_smartspawn.worker.base import per_worker_sockets

# The master sends BecomeTemplate before the signal; it is there when we look.
ORDERS_TIMEOUT = 5.0
# sysexits' EX_TEMPFAIL: a prevent_fork() block outlasted graceful_timeout; the master
# tries the refork again later (refork.py).
GATE_CLOSED = 75


class Template(Spawner):
    spawned_from = "template"
    hook = "pre_template_fork"

    def __init__(self, worker, listener_fds):
        super().__init__(worker.server, worker.channel, worker.generation, worker.counters)
        self.worker = worker
        self.listener_fds = listener_fds
        self.app_signals = worker.app_signals

    def run(self):
        """Become the template and fork until retired; an exception ends the process
        (exit code 1), logged here: the master falls back to the preloader."""
        try:
            self.become_template()
        except Exception:
            self.log.exception("Exception in template (pid: %s, gen=%s)",
                               self.pid, self.generation)
            raise SystemExit(1) from None
        finally:
            # Ending already (worker_exit, then the atexit handlers): a TERM now must not
            # raise SystemExit inside them, as it does not in a gunicorn worker's exit.
            signal.signal(signal.SIGTERM, signal.SIG_IGN)

    def become_template(self):
        started = time.monotonic()
        self.channel.settimeout(ORDERS_TIMEOUT)
        try:
            orders, fds = protocol.recv(self.channel)
        except (OSError, EOFError) as exc:
            self.log.error("Worker (pid: %s) got no template orders: %s", self.pid, exc)
            return
        self.close_fds(fds)
        self.channel.settimeout(None)
        self.generation = orders.generation
        worker = self.worker
        worker.notify()
        util._setproctitle("smartspawn template [%s] gen=%s"
                           % (self.server.proc_name, self.generation))
        self.cfg.pre_template_fork(worker)
        if not worker.template_requested:
            self.log.info("Worker (pid: %s) was stopped before it became the template",
                          self.pid)
            return
        self.quiesce(worker)
        refusal = self.fork_gate_refusal()
        if refusal is not None:
            self.log.warning("Worker (pid: %s) will not become the template: %s",
                             self.pid, refusal.reason)
            protocol.send(self.channel, refusal)
            return
        try:
            forksafety.check(self.cfg, self.log, "template", "pre_template_fork",
                             self.known_fds() | {worker.tmp.fileno()}
                             | worker.loop_library_fds())
        except forksafety.ForkUnsafe as exc:
            self.log.error("%s", exc)
            protocol.send(self.channel, protocol.BootFailed(1, str(exc)))
            return
        self.announce_ready(started, heartbeat=worker.notify)
        worker.tmp.close()  # no longer a worker: the master stopped watching it
        self.serve()

    def init_signals(self):
        super().init_signals()
        # Still the worker it was, to the application: TERM (the master retiring it, or
        # the kernel when the master dies) ends it as it ends a gunicorn worker, through
        # worker_exit and the atexit handlers (run_worker_process).
        signal.signal(signal.SIGTERM, exit_gracefully)

    def fork_gate_refusal(self):
        """A BootFailed when the application keeps this worker from being forked, or None."""
        if not forkgate.fork_safe():
            return protocol.BootFailed(1, "the application called no_longer_fork_safe()")
        deadline = time.monotonic() + self.cfg.graceful_timeout
        # Still a worker to gunicorn's master until ready: keep its heartbeat going.
        while not forkgate.wait_until_forkable(min(1.0, self.cfg.graceful_timeout)):
            self.worker.notify()
            if time.monotonic() >= deadline:
                return protocol.BootFailed(GATE_CLOSED, "a prevent_fork() block ran for more "
                                           "than %ss (graceful_timeout)"
                                           % self.cfg.graceful_timeout)
        return None

    def quiesce(self, worker):
        """Leave nothing of the serving worker that its children must not inherit."""
        worker.leave_serving()
        self.init_signals()
        if per_worker_sockets(self.cfg):
            # Our own SO_REUSEPORT sockets: kept open, the kernel would still hand them
            # connections nobody accepts. Our workers get theirs from the master.
            for listener in worker.sockets:
                listener.close()
            self.server.LISTENERS = []
            return
        # gthread closed the listeners on its way out; rebuild them from our copies.
        listeners = []
        for old, fd in zip(self.server.LISTENERS, self.listener_fds, strict=True):
            old.close()
            listeners.append(type(old)(old.cfg_addr, self.cfg, self.log, fd=fd))
        self.server.LISTENERS = listeners


def exit_gracefully(_signum, _frame):
    raise SystemExit(0)


Template.template_class = Template  # its workers become the next template
