"""The master's spawners: the preloader, a HUP's next preloader, and the template.

The pool owns their handles and channels: it reads their messages, retires and kills them,
and reaps (and logs) them and their standbys, the master's children that are not workers
(`helpers`). A pid is signalled only while it is a child the master has not reaped, so it
cannot have been reused by another process.
"""
import dataclasses
import os
import signal
import time

from gunicorn_smartspawn import protocol


def signal_name(number):
    try:
        return signal.Signals(number).name
    except ValueError:  # a real-time signal has no name
        return "signal %d" % number


class SpawnerHandle:
    """The master's view of a process that forks workers: the preloader or a template."""

    def __init__(self, kind, pid, channel, generation, boot_timeout=None):
        self.kind = kind  # "preloader" | "template"
        self.pid = pid
        self.channel = channel
        self.generation = generation
        self.started_at = time.monotonic()
        self.boot_deadline = self.started_at + boot_timeout if boot_timeout else None
        self.ready = False
        self.retiring = False
        self.stuck = False  # killed for not answering: never asked again
        self.standby_pid = None  # its worker forked ahead of need
        self.failure = None  # the BootFailed message, or why the master killed it
        self.last_used = self.started_at  # the last spawn request (preloader_idle_timeout)
        self.immortal = None  # gc_freeze = "immortal": {"objects", "walked", "seconds"}

    def __repr__(self):
        return "%s (pid: %s, gen=%s)" % (self.kind, self.pid, self.generation)

    @property
    def usable(self):
        return self.ready and not (self.retiring or self.stuck)

    def request_spawn(self, age, slot, fds, listeners=0, hook_state=False):
        self.last_used = time.monotonic()
        protocol.send(self.channel, protocol.SpawnWorker(age, slot, listeners, hook_state),
                      fds)


@dataclasses.dataclass(frozen=True)
class ChannelClosed:
    """Not a message: the spawner's channel hit EOF (it exited; reaped apart)."""


@dataclasses.dataclass(frozen=True)
class ChannelBroken:
    """Not a message: what came was no message; the pool has killed the spawner."""
    error: str


class SpawnerPool:
    def __init__(self, log, workers):
        self.log = log
        self.workers = workers  # gunicorn's WORKERS: a refork's candidate is one until ready
        self.handles = []       # every spawner whose channel is open
        self.preloader = None   # the preloader serving spawn requests
        self.next_preloader = None  # booting after a HUP, for the next generation
        self.template = None    # the template of the current generation
        self.helpers = {}       # unreaped non-worker children: pid -> role
        self.served = {}        # templates: pid -> the Worker it was (for child_exit)
        self.killed_on_purpose = set()

    def add(self, handle):
        """Start tracking `handle`; a preloader is a helper from its fork on."""
        self.handles.append(handle)
        if handle.kind == "preloader":
            self.helpers[handle.pid] = "preloader"

    def current(self):
        """The spawner to ask: the template if it is usable, else the preloader, or None."""
        for spawner in (self.template, self.preloader):
            if spawner is not None and spawner.usable:
                return spawner
        return None

    def by_pid(self, pid):
        return next((s for s in self.handles if s.pid == pid), None)

    # -- messages -------------------------------------------------------------------------

    def channels(self):
        return [s.channel for s in self.handles]

    def read(self, handles):
        """Yield (handle, message) for what has arrived from `handles`; a message may be
        ChannelClosed or ChannelBroken, after which the handle is out of the pool."""
        for spawner in handles:
            while spawner in self.handles:
                try:
                    message, fds = protocol.recv(spawner.channel)
                except BlockingIOError:
                    break
                except (EOFError, ConnectionError):
                    self.remove(spawner)
                    yield spawner, ChannelClosed()
                    break
                except (protocol.ProtocolError, OSError) as exc:
                    yield spawner, self.broken(spawner, exc)
                    break
                for fd in fds:
                    os.close(fd)
                yield spawner, message

    def broken(self, spawner, exc):
        """`spawner` sent what no healthy one sends: never trusted again."""
        self.log.error("%r sent what is not a message (%s); killing it", spawner, exc)
        self.kill(spawner)
        self.remove(spawner)
        return ChannelBroken(str(exc))

    def give_back(self, handle):
        """Stop tracking a refork candidate that was never told: returns its channel."""
        self.handles.remove(handle)
        return handle.channel

    def remove(self, spawner):
        spawner.channel.close()
        self.handles.remove(spawner)

    def standby_ready(self, spawner, pid):
        spawner.standby_pid = pid
        self.helpers[pid] = "standby"

    def standby_taken(self, spawner, pid):
        """Standby `pid` became a worker: gunicorn's to reap from now on."""
        if spawner.standby_pid == pid:
            spawner.standby_pid = None
        self.helpers.pop(pid, None)

    def template_ready(self, handle, worker):
        """The refork candidate `handle` is a template now, no longer `worker`."""
        handle.ready = True
        self.helpers[handle.pid] = "template"
        if worker is not None:
            self.served[handle.pid] = worker

    # -- stopping them --------------------------------------------------------------------

    def retire(self, spawner, busy_pids):
        """Stop using `spawner`; it is stopped once no spawn waits on it (close_retired)."""
        spawner.retiring = True
        if spawner.ready:
            self.close_retired(busy_pids)
        elif spawner.kind == "template":
            # A refork's candidate: still a serving worker, finishing its requests. It
            # stays in WORKERS, and gunicorn stops it like any worker.
            pass
        else:
            self.kill(spawner)  # still loading the app: nothing in it to keep

    def close_retired(self, busy_pids):
        """Close the retired spawners no spawn waits on (a check-in must not be lost)."""
        for spawner in list(self.handles):
            if spawner.retiring and spawner.ready and spawner.pid not in busy_pids:
                self.remove(spawner)
                # Not only the EOF: a process forked from the master by gunicorn or a
                # hook may still hold a copy of the channel.
                self.signal(spawner.pid, signal.SIGTERM)

    def kill_standby(self, spawner, pid):
        """Kill `spawner`'s standby `pid` (it took a request given up meanwhile); it is
        still a helper, reaped and logged as one."""
        if spawner.standby_pid == pid:
            spawner.standby_pid = None
        self.killed_on_purpose.add(pid)
        self.signal(pid, signal.SIGKILL)

    def kill(self, spawner):
        """SIGKILL on purpose: its exit is logged at info; the reason was logged already."""
        self.killed_on_purpose.add(spawner.pid)
        self.signal(spawner.pid, signal.SIGKILL)

    def signal(self, pid, sig):
        """Signal `pid` only while it is a child we have not reaped."""
        if pid in self.helpers or pid in self.workers:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass  # a zombie: reaped soon

    def signal_helpers(self, sig):
        for pid in list(self.helpers):
            self.signal(pid, sig)

    def close_all(self):
        for spawner in list(self.handles):
            self.remove(spawner)
        self.preloader = self.next_preloader = self.template = None

    def close_in_child(self):
        """In a child forked from the master: close every channel (see arbiter.py)."""
        for spawner in self.handles:
            spawner.channel.close()

    # -- reaping --------------------------------------------------------------------------

    def reap(self):
        """Reap (and log) exited helpers: spawners and standbys. Returns the Workers that
        the reaped templates were (the master calls child_exit for them)."""
        ended = []
        for pid in list(self.helpers):
            try:
                wpid, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                wpid, status = pid, None  # gunicorn's waitpid(-1) reaped it first
            if wpid:
                self.reaped(pid, self.helpers.pop(pid), status)
                if pid in self.served:
                    ended.append(self.served.pop(pid))
        return ended

    def reaped(self, pid, role, status):
        if role == "standby":
            for spawner in self.handles:
                if spawner.standby_pid == pid:
                    spawner.standby_pid = None
        if status is None:
            return
        name = "Standby" if role == "standby" else "Spawner"
        if os.WIFSIGNALED(status):
            number = os.WTERMSIG(status)
            expected = number == signal.SIGTERM or pid in self.killed_on_purpose
            self.killed_on_purpose.discard(pid)
            (self.log.info if expected else self.log.error)(
                "%s (pid: %s) was sent %s", name, pid, signal_name(number))
        elif os.WEXITSTATUS(status):
            self.log.error("%s (pid: %s) exited with code %s",
                           name, pid, os.WEXITSTATUS(status))
        else:
            self.log.info("%s (pid: %s) exited", name, pid)

    def wait_all(self, deadline):
        """Reap every helper by `deadline`; SIGKILL those still running then. Returns
        the Workers the reaped templates were."""
        ended = []
        while self.helpers and time.monotonic() < deadline:
            ended += self.reap()
            time.sleep(0.05)
        for pid in list(self.helpers):
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
            del self.helpers[pid]
            if pid in self.served:
                ended.append(self.served.pop(pid))
        return ended
