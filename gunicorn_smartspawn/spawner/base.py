"""Forking workers on the master's request: what the preloader and a template share.

A worker is made by a double fork: the middle process exits at once, so the worker is
orphaned and the kernel re-parents it to the master (a child subreaper), which then reaps
and supervises it exactly as gunicorn supervises its own workers.

The double fork costs milliseconds per 100 MB of heap (page tables are copied twice), so
it is done ahead of need: a spawner always keeps one *standby*, already forked and
adopted by the master, waiting on the spawner's channel: it reads the master's next spawn
request itself (the master sends a spawner one at a time, fleet.py), so the request wakes
one process, not two. Its first act is to tell the master its pid (so the master knows it
before it could ever reap it), then the spawner; then it becomes the worker, and the
spawner forks the next standby, once the new worker has had time to answer its first
request (NEXT_STANDBY_DELAY). A request that finds no standby (one dying, or not forked
yet) is read by the spawner, which forks one on demand and hands the request to it.
"""
import gc
import os
import select
import signal
import socket
import sys
import time

from gunicorn import sock, util

from gunicorn_smartspawn import forksafety
from gunicorn_smartspawn.forksafety import immortal
from gunicorn_smartspawn.host import patches
from gunicorn_smartspawn.shared import _linux, hookstate, protocol, signals
from gunicorn_smartspawn.spawner import prefault
from gunicorn_smartspawn.worker.base import (
    TEMPLATE_CHILD_BOOT_ERROR, WORKER_BOOT_ERROR, HeartbeatFile, become_worker, exit_process,
)

# A worker is normally re-parented within microseconds of the double fork.
REPARENT_TIMEOUT = 2.0
# A live standby acknowledges its orders within microseconds.
ACK_TIMEOUT = 2.0
# After a hand-over, the next standby is forked this much later (seconds), or at once for
# a request that comes meanwhile. Its double fork (gc.collect, gc.freeze, page tables
# copied twice: 25 ms on the bench app's 155 MB heap, 80-125 ms on a heap ten times
# larger) took one of two cores for the whole of the new worker's boot and first
# request: TTIN to first response 12.1-12.7 ms with it, 9.7-10.6 ms without; from a
# template 14.4-15.3 ms, 8.0-9.1 ms; 18.3 ms, 12.3 ms on the larger heap.
NEXT_STANDBY_DELAY = 0.1


def ignore_signal(_signum, _frame):
    pass


def take_sigchld():
    """SIGCHLD at its default until the middle process of a fork is reaped; returns the
    disposition to put back, or None if there is none to.

    Ignored, or with a handler that reaps every child (an on_preload hook may set
    either), the middle process would be gone before our waitpid. Left alone when it is
    already the default: under gevent, setting it resets the event loop's own SIGCHLD
    handler, which the app's child watchers rely on.
    """
    current = signal.getsignal(signal.SIGCHLD)
    if current in (signal.SIG_DFL, None):  # None: not set from Python; left so
        return None
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    return current


def gevent_monkey():
    """gevent.monkey if gevent patched os (the gevent worker's before_app_import), else
    None."""
    monkey = sys.modules.get("gevent.monkey")
    return monkey if monkey is not None and monkey.is_module_patched("os") else None


def fork_and_waitpid():
    """(fork, waitpid) for the middle process of a double fork, which this process reaps
    at once, itself.

    Under gevent: gevent's fork_gevent, which prepares the child's event loop but starts
    no child watcher, and the kernel's waitpid. gevent's own fork starts a watcher after
    the fork, and the first one installs the loop's SIGCHLD handler: a middle process that
    exited before that was never seen, and gevent's waitpid waited for ever (under CPU
    load, 7 in 30 first forks of a fresh process); the spawn then timed out and the
    master killed the spawner. No event loop runs between our fork and our waitpid, so
    libev cannot reap the middle process first.
    """
    monkey = gevent_monkey()
    if monkey is not None:
        from gevent.os import fork_gevent
        return fork_gevent, monkey.get_original("os", "waitpid")
    return os.fork, os.waitpid


def reinstall_gevent_sigchld():
    """Under gevent, the loop's SIGCHLD handler installed again, as gevent's own fork did
    at each fork (its child watcher installs it): a SIGCHLD set to the default since (by
    the app's import, or a template's signals) would otherwise leave the app's
    gevent.subprocess waits, in this process, without the signal that ends them."""
    if gevent_monkey() is not None:
        from gevent import get_hub
        get_hub().loop.install_sigchld()


class Spawner:
    """The serving half of a spawner process. Subclasses set `spawned_from`."""

    spawned_from: str = ""  # "preloader" | "template"
    hook: str = ""  # where the application prepares it for forking: for fork-safety advice
    template_class: type | None = None  # what its workers become on SIGURG (a Template)

    def __init__(self, server, channel, generation, counters):
        self.server = server  # the arbiter, as copied into this process by fork
        self.counters = counters  # the master's per-worker counters (counters.py), shared
        self.app = server.app
        self.cfg = server.cfg
        self.log = server.log
        self.channel = channel
        self.generation = generation
        self.master_pid = server.pid
        self.pid = os.getpid()
        # What the app's import set (appsignals.py), for each worker forked from here.
        self.app_signals = None
        # The worker last handed over: a standby forked ahead of need copies the pages it
        # wrote (prefault.py).
        self.last_worker_pid = None

    def init_signals(self):
        signal.set_wakeup_fd(-1)  # the master's or the worker's pipe, closed here
        for sig in self.server.SIGNALS:
            # A handler that does nothing, not SIG_IGN: SIG_IGN would pass into every
            # program the app runs (it survives exec) and into the workers.
            signal.signal(sig, ignore_signal)
        # The master retires a spawner by closing the channel (it exits on EOF) and the
        # kernel kills it with the master (PDEATHSIG). INT and QUIT are ignored: a terminal
        # sends them to the whole process group, and the master decides. TERM stops it (an
        # operator's `kill`): the master then falls back or starts a new one.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGUSR1, lambda *_: self.log.reopen_files())
        signals.ignore_ours()  # a template was a worker, which took them

    def known_fds(self):
        """Our own fds, expected to be shared: stdio, the listeners, our channel, and
        gunicorn's statsd socket (each worker sends its own datagrams on it)."""
        known = {0, 1, 2, self.channel.fileno()}
        known.update(lnr.fileno() for lnr in self.server.LISTENERS)
        statsd = getattr(self.log, "sock", None)
        if statsd is not None:
            known.add(statsd.fileno())
        return known

    def boot_failed(self, exit_code, reason):
        """Tell the master why this spawner cannot go on; returns `exit_code`."""
        try:
            protocol.send(self.channel, protocol.BootFailed(exit_code, reason))
        except OSError:
            pass  # the master has gone; nobody to tell
        return exit_code

    def announce_ready(self, started, heartbeat=lambda: None):
        """Tell the master we take spawn requests; `started`: when we began (monotonic).
        With gc_freeze = "immortal", the heap is made immortal first, once: before every
        later fork, freeze_heap() only collects and freezes what is new. `heartbeat`: a
        template's, still a worker's to the master until it is ready."""
        objects = walked = seconds = None
        if self.cfg.gc_freeze == "immortal":
            gc.collect()  # garbage made immortal would never be freed
            heartbeat()
            try:
                objects, walked, seconds = immortal.make_heap_immortal(heartbeat)
            except immortal.WalkFailed as exc:  # what it made immortal stays so; frozen
                self.log.warning('%s: gc_freeze = "immortal": %s; the heap is only '
                                 'partly immortal', self.spawned_from, exc)
        protocol.send(self.channel, protocol.SpawnerReady(
            self.pid, time.monotonic() - started, objects, walked, seconds))

    def serve(self):
        """Fork workers until the master closes the channel or goes."""
        standby = None
        handed_over = False
        try:
            while True:
                # Between requests: off the critical path, and out of the new worker's way.
                if standby is None and not (handed_over
                                            and self.message_within(NEXT_STANDBY_DELAY)):
                    standby = self.start_standby(prefault_from=self.last_worker_pid)
                handed_over = False
                if standby is not None:
                    handed_over = self.standby_taken(standby)
                    standby.close()
                    standby = None
                    # Not taken: it died (or saw the channel closed). A request it read
                    # before it died is lost: the master gives up on it (SPAWN_TIMEOUT).
                    # The next request is read here, its standby forked on demand: one
                    # that dies as it starts is not forked again and again.
                    if handed_over:
                        continue
                try:
                    message, fds = protocol.recv(self.channel)
                except (EOFError, ConnectionError):
                    return
                except protocol.ProtocolError as exc:
                    self.log.error("%s: the master sent no message (%s)", self.spawned_from, exc)
                    return
                if isinstance(message, protocol.SpawnWorker) and fds:
                    self.hand_over(message, fds)
                    handed_over = True
                else:
                    self.close_fds(fds)
                    self.log.error("%s: unexpected message %r", self.spawned_from, message)
        except forksafety.ForkUnsafe as exc:
            # fork_safety = "strict" and a thread started since the check: this process
            # will not fork again. It exits; the master starts another (with its backoff)
            # or, for a template, spawns from the preloader.
            self.log.error("%s", exc)
            self.boot_failed(WORKER_BOOT_ERROR, str(exc))
        finally:
            if standby is not None:
                standby.close()  # EOF: the standby exits

    def message_within(self, seconds):
        """True if a message (or EOF) comes from the master within `seconds`."""
        readable, _, _ = select.select([self.channel], [], [], seconds)
        return bool(readable)

    def standby_taken(self, standby):
        """Wait until our standby has taken a request from the channel (True) or ended."""
        try:
            spawned, _ = protocol.recv(standby)
        except (EOFError, OSError, protocol.ProtocolError):
            return False
        self.last_worker_pid = spawned.pid
        return True

    def hand_over(self, request, fds):
        """Fork a standby for a spawn request we read; it becomes the worker."""
        try:
            for _attempt in range(2):
                standby = self.start_standby(inherited=fds)
                if standby is None:
                    break
                taken = self.give_orders(standby, request, fds)
                standby.close()
                if taken:
                    return
                # It died while waiting (a send to a dying process can vanish without an
                # error, hence the acknowledgement): make another.
            protocol.send(self.channel, protocol.SpawnFailed(
                request.age, "no standby worker could be forked"))
        finally:
            self.close_fds(fds)

    def give_orders(self, standby, request, fds):
        """True once the standby acknowledged (after telling the master its pid)."""
        try:
            # The standby reports to the master itself, on a copy of our channel.
            protocol.send(standby, request, [*fds, self.channel.fileno()])
            standby.settimeout(ACK_TIMEOUT)
            spawned, _ = protocol.recv(standby)
            self.last_worker_pid = spawned.pid
            return True
        except (OSError, EOFError):
            return False

    @staticmethod
    def close_fds(fds):
        for fd in fds:
            os.close(fd)

    def start_standby(self, inherited=(), prefault_from=None):
        """Double-fork a standby worker; returns our end of its socket, or None.

        `inherited`: fds of ours that it must not keep (a spawn request's, in hand).
        `prefault_from`: a worker whose written pages the standby copies while it waits.
        """
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        if self.cfg.gc_freeze:
            self.freeze_heap()
        # A TERM waits until the middle process is reaped (a template exits on TERM by
        # raising SystemExit: not halfway through a fork).
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        sigchld = take_sigchld()
        try:
            fork_process, waitpid = fork_and_waitpid()
            middle = forksafety.fork(self.cfg, self.log, self.spawned_from, self.hook,
                                     fork_process)
            if middle == 0:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the standby dies with the master
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
                self.run_middle(ours, theirs, inherited, prefault_from)
            theirs.close()
            _, status = waitpid(middle, 0)
            reinstall_gevent_sigchld()  # before the app's own disposition is put back
        except forksafety.ForkUnsafe:
            ours.close()
            theirs.close()
            raise  # serve() ends this spawner: it will not fork again
        except OSError as exc:
            self.log.error("%s: fork failed: %s", self.spawned_from, exc)
            ours.close()
            theirs.close()
            return None
        finally:
            if sigchld is not None:
                signal.signal(signal.SIGCHLD, sigchld)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        if status != 0:
            self.log.error("%s: second fork failed (wait status %s)", self.spawned_from, status)
            ours.close()
            return None
        return ours

    @staticmethod
    def freeze_heap():
        """Collect, then freeze what survives, right before every fork.

        The collection first: frozen garbage is never freed, and on 3.14.0-3.14.4 the
        incremental collector leaves much more of it uncollected at any moment. The freeze
        at every fork, not once: what this process allocated since the last one would
        otherwise be walked (and un-shared) by every worker's full collections. Once the
        heap is frozen, the collection walks only those new objects.
        """
        gc.collect()
        gc.freeze()

    def run_middle(self, ours, theirs, inherited, prefault_from):
        """The middle of the double fork: exits at once so the standby is re-parented."""
        code = 1
        middle = os.getpid()
        try:
            self.close_fds(inherited)
            if forksafety.fork_again() == 0:
                self.run_standby(ours, theirs, prefault_from, middle)
            code = 0
        except BaseException:
            self.log.exception("%s: the middle process of a fork (pid: %s) failed",
                               self.spawned_from, os.getpid())
        finally:
            os._exit(code)

    def run_standby(self, ours, theirs, prefault_from, middle):
        """A worker forked ahead of need: adopted by the master, it waits for its orders."""
        try:
            ours.close()
            if not self.wait_for_adoption(middle):
                os._exit(1)
            # Once adopted: the master checks that the pid it is told of is its child.
            protocol.send(self.channel, protocol.StandbyReady(os.getpid()))
            util._setproctitle("smartspawn standby [%s] gen=%s"
                               % (self.server.proc_name, self.generation))
            if prefault_from is not None:
                self.log.debug("Standby (pid: %s): the pages of worker %s copied: %s",
                               os.getpid(), prefault_from, prefault.take_faults_of(
                                   prefault_from, lambda: self.message_within(0)))
            request, fds, master = self.await_orders(theirs)
        except (EOFError, ConnectionError):
            os._exit(0)  # the spawner or the master has gone: never a worker
        except BaseException:
            self.log.exception("Standby (pid: %s) failed while waiting for its orders",
                               os.getpid())
            os._exit(1)
        spawned = protocol.WorkerSpawned(request.age, os.getpid())
        try:
            # First act as a worker: the master must know this pid before it can reap it.
            protocol.send(master, spawned)
        except OSError:
            os._exit(1)
        finally:
            # Without a copy of the channel here, the master sees EOF when the spawner exits.
            master.close()
        with theirs:
            try:
                protocol.send(theirs, spawned)  # the acknowledgement
            except OSError:
                pass  # the spawner has gone since; the master knows us: serve anyway
        try:
            worker = self.new_worker(request, fds)
        except BaseException:
            # gunicorn's master would have failed to build it too: a boot error.
            self.log.exception("Worker (pid: %s) could not be built", os.getpid())
            exit_process(TEMPLATE_CHILD_BOOT_ERROR if self.spawned_from == "template"
                         else WORKER_BOOT_ERROR)
        become_worker(self.server, worker)

    def await_orders(self, theirs):
        """A spawn request, from the master on the channel (a standby forked ahead of
        need) or from the spawner, which read it (one forked on demand: the channel copy
        comes last). -> (request, its fds, the socket to report to the master on)."""
        readable, _, _ = select.select([theirs, self.channel], [], [])
        if theirs in readable:  # the spawner's orders, or EOF: it has gone
            request, fds = protocol.recv(theirs)
            self.channel.close()
            return request, fds[:-1], protocol.shared_socket(fds[-1])
        request, fds = protocol.recv(self.channel)
        if not (isinstance(request, protocol.SpawnWorker) and fds):
            self.close_fds(fds)
            raise protocol.ProtocolError("unexpected message %r" % (request,))
        return request, fds, self.channel

    def wait_for_adoption(self, middle):
        """Wait until the master is our parent, then die with it (SIGTERM: graceful).
        False at once when another process adopts us: the master has died (it would
        otherwise hold the listeners open for REPARENT_TIMEOUT, and a client's connection
        would be reset instead of refused)."""
        deadline = time.monotonic() + REPARENT_TIMEOUT
        while (parent := os.getppid()) != self.master_pid:
            if parent != middle:
                return False
            if time.monotonic() > deadline:
                self.log.error("Worker (pid: %s) was not re-parented to the master "
                               "(pid: %s); exiting", os.getpid(), self.master_pid)
                return False
            time.sleep(0.0001)
        # Set only now: set earlier, the middle process's exit would have sent it.
        return _linux.die_with_parent(self.master_pid, signal.SIGTERM)

    def new_worker(self, request, fds):
        """The Worker the master asked for: `fds` as SpawnWorker lists them."""
        server = self.server
        heartbeat, *fds = fds
        state_fd = fds.pop(0) if request.hook_state else None
        listeners = fds[len(fds) - request.listeners:] if request.listeners else []
        with patches.building_worker(HeartbeatFile(heartbeat)):
            worker = server.worker_class(request.age, self.master_pid, server.LISTENERS,
                                         self.app, server.timeout / 2.0, self.cfg, self.log)
        if len(fds) > len(listeners):
            worker.channel = socket.socket(fileno=fds[0])
        if listeners:  # reuse_port: the sockets the master bound for this worker
            worker.sockets = sock.create_sockets(self.cfg, self.log, listeners)
        worker.slot = request.slot
        worker.counters = self.counters
        worker.spawned_from = self.spawned_from
        worker.spawner_pid = self.pid
        worker.generation = self.generation
        worker.template_class = self.template_class
        worker.app_signals = self.app_signals
        if state_fd is not None:
            try:
                hookstate.apply(state_fd, server, worker)
            except Exception:  # e.g. a class the spawner cannot import: serve without it
                self.log.exception("Worker (pid: %s) could not take what pre_fork set "
                                   "for it", os.getpid())
        return worker
