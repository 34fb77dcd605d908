"""Forking workers on the master's request: what the preloader and a template share.

A worker is made by a double fork: the middle process exits at once, so the worker is
orphaned and the kernel re-parents it to the master (a child subreaper), which then reaps
and supervises it exactly as gunicorn supervises its own workers. The worker's first act
is to tell the master its pid, so the master knows it before it could ever reap it.
"""
import os
import signal
import socket
import time

from gunicorn_smartspawn import _linux, protocol
from gunicorn_smartspawn.worker import HeartbeatFile, become_worker, exit_process

# A worker is normally re-parented within microseconds of the double fork.
REPARENT_TIMEOUT = 2.0


class Spawner:
    """The serving half of a spawner process. Subclasses set `spawned_from`."""

    spawned_from = None

    def __init__(self, server, channel, generation):
        self.server = server  # the arbiter, as copied into this process by fork
        self.app = server.app
        self.cfg = server.cfg
        self.log = server.log
        self.channel = channel
        self.generation = generation
        self.master_pid = server.pid
        self.pid = os.getpid()

    def init_signals(self):
        signal.set_wakeup_fd(-1)  # the master's or the worker's pipe, closed here
        for sig in self.server.SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        # The master retires a spawner by closing the channel (it exits on EOF) and the
        # kernel kills it with the master (PDEATHSIG). INT and QUIT are ignored: a terminal
        # sends them to the whole process group, and the master decides. TERM stops it (an
        # operator's `kill`): the master then falls back or starts a new one.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGUSR1, lambda *_: self.log.reopen_files())

    def announce_ready(self, boot_seconds):
        protocol.send(self.channel, protocol.SpawnerReady(self.pid, boot_seconds))

    def serve(self):
        """Fork workers until the master closes the channel or goes."""
        while True:
            try:
                message, fds = protocol.recv(self.channel)
            except (EOFError, ConnectionError):
                return
            if isinstance(message, protocol.SpawnWorker) and fds:
                self.fork_worker(message, fds)
            else:
                for fd in fds:
                    os.close(fd)
                self.log.error("%s: unexpected message %r", self.spawned_from, message)

    def fork_worker(self, request, fds):
        try:
            middle = os.fork()
        except OSError as exc:
            self.close_fds(fds)
            protocol.send(self.channel, protocol.SpawnFailed(request.age, "fork: %s" % exc))
            return
        if middle == 0:
            self.run_middle(request, fds)
        self.close_fds(fds)
        _, status = os.waitpid(middle, 0)
        if status != 0:
            protocol.send(self.channel, protocol.SpawnFailed(
                request.age, "second fork failed (wait status %s)" % status))

    @staticmethod
    def close_fds(fds):
        for fd in fds:
            os.close(fd)

    def run_middle(self, request, fds):
        """The middle of the double fork: exits at once so the worker is re-parented."""
        code = 1
        try:
            if os.fork() == 0:
                self.run_worker(request, fds)
            code = 0
        finally:
            os._exit(code)

    def run_worker(self, request, fds):
        adopted = False
        try:
            protocol.send(self.channel, protocol.WorkerSpawned(request.age, os.getpid()))
            self.channel.close()
            adopted = self.wait_for_adoption()
        finally:
            if not adopted:
                exit_process(1)
        become_worker(self.server, self.new_worker(request, fds))

    def wait_for_adoption(self):
        """Wait until the master is our parent, then die with it (SIGTERM: graceful)."""
        deadline = time.monotonic() + REPARENT_TIMEOUT
        while os.getppid() != self.master_pid:
            if time.monotonic() > deadline:
                self.log.error("Worker (pid: %s) was not re-parented to the master "
                               "(pid: %s); exiting", os.getpid(), self.master_pid)
                return False
            time.sleep(0.0001)
        # Set only now: set earlier, the middle process's exit would have sent it.
        return _linux.die_with_parent(self.master_pid, signal.SIGTERM)

    def new_worker(self, request, fds):
        server = self.server
        worker = server.worker_class(request.age, self.master_pid, server.LISTENERS,
                                     self.app, server.timeout / 2.0, self.cfg, self.log)
        worker.tmp.close()  # a new file nobody watches; the master watches the one it sent
        worker.tmp = HeartbeatFile(fds[0])
        if len(fds) > 1:
            worker.channel = socket.socket(fileno=fds[1])
        worker.slot = request.slot
        worker.spawned_from = self.spawned_from
        worker.spawner_pid = self.pid
        worker.generation = self.generation
        return worker
