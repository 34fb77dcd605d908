"""The master's table of its children: one record per process, with a role and a state.

Every process the master knows of has one ChildRecord here, from the moment it is asked
for (a worker) or forked (a preloader) until it is gone, as Pitchfork's ``children.rb``
holds every child. What a change of state must do (free a counter slot, close a channel,
give back a seat, stop tracking a pid) is done by the table's methods, in one place.

    worker     QUEUED -> SENT -> SERVING -> OUTGOING -> STOPPING -> (gone)
               (a direct spawn starts SERVING; any live worker may go to STOPPING)
               SERVING -> CANDIDATE -> the template (a refork), or back to SERVING
    standby    WAITING -> (gone, or the worker it became)
    preloader  BOOTING -> READY -> RETIRING -> (gone)
    template   READY -> RETIRING -> (gone): a former worker that forks the next generation

gunicorn's ``WORKERS`` (pid -> gunicorn Worker) is kept from the table for gunicorn's
own code: its reaper, its timeouts, its control socket. Its reaper pops a worker from it
when it reaps one; ``release_departed()`` then ends that worker's record.

The spawners' slots (the preloader, a HUP's next preloader, the template) are named here
and change only through the table's methods. A pid is signalled only while its process
is a child the master has not reaped, so it cannot have been reused.
"""
import dataclasses
import enum
import itertools
import os
import signal
import socket
import time

from gunicorn_smartspawn.shared import protocol
from gunicorn_smartspawn.shared.counters import Counters

# How long a spawn request may go unanswered before its spawner is deemed stuck.
SPAWN_TIMEOUT = 5.0


class Role(enum.Enum):
    WORKER = "worker"
    STANDBY = "standby"        # a worker forked ahead of need, waiting for its orders
    PRELOADER = "preloader"
    TEMPLATE = "template"      # after a refork: the worker that forks the next generation


class State(enum.Enum):
    QUEUED = "queued"          # a worker asked of a spawner, request not sent yet
    SENT = "sent"              # its request sent, not checked in yet
    SERVING = "serving"        # a live worker (in WORKERS)
    OUTGOING = "outgoing"      # serving until its replacement does (lifecycle.py)
    STOPPING = "stopping"      # told to stop
    CANDIDATE = "candidate"    # a worker leaving service to become the template
    WAITING = "waiting"        # a standby
    BOOTING = "booting"        # a preloader loading the app
    READY = "ready"            # a spawner taking spawn requests
    RETIRING = "retiring"      # a spawner asked to exit once no spawn waits on it


LIVE_WORKER = {State.SERVING, State.OUTGOING, State.STOPPING, State.CANDIDATE}
# The signals that stop a worker (told_to_stop); USR1, WINCH and the like do not.
STOP_SIGNALS = {signal.SIGTERM, signal.SIGQUIT, signal.SIGINT, signal.SIGKILL, signal.SIGABRT}


@dataclasses.dataclass(eq=False)
class ChildRecord:
    role: Role
    state: State
    generation: int
    pid: int | None = None            # None while a worker is queued or sent
    channel: socket.socket | None = None  # a spawner's, or (fork_worker) a worker's
    spawner_pid: int | None = None    # the process it is (to be) forked from
    # -- workers
    worker: object = None             # gunicorn's Worker (kept by a template: child_exit)
    spawned_from: str = ""            # "master" | "preloader" | "template"
    slot: int | None = None           # its counters (counters.py)
    seat: int | None = None           # reuse_port: its sockets in the table's seats
    pre_fork_state: bytes | None = None  # what pre_fork left for it (hookstate.py)
    asked_at: float = 0.0             # when the master asked for it
    spawn_deadline: float | None = None  # for its spawner's answer, once sent
    spawned_mtime: float = 0.0        # its heartbeat's mtime before it ever beat
    outgoing_why: str | None = None   # why it is being replaced (lifecycle.py)
    stopped_on_purpose: bool = False  # the master signalled it to stop
    booted: bool = False              # seen beating its heartbeat (before a reap)
    served: bool = False              # seen serving by the lifecycle (lifecycle.py)
    uss: int | None = None            # the last memory sample (lifecycle.py)
    rss: int | None = None
    over_limit: int = 0               # samples in a row above max_worker_memory
    disabled: bool = False            # out of rotation (`worker disable`, outofband.py)
    unserved_uss: int | None = None   # its first sample, if before its first request
    # -- spawners
    started_at: float = 0.0
    ready: bool = False               # it reported SpawnerReady (retiring or not)
    boot_deadline: float | None = None
    standby_pid: int | None = None    # its standby
    failure: object = None            # its BootFailed, or why the master killed it
    last_used: float = 0.0            # its last spawn request (preloader_idle_timeout)
    immortal: dict | None = None      # gc_freeze = "immortal": {"objects", "walked", ...}
    stuck: bool = False               # killed for not answering: never asked again
    killed_on_purpose: bool = False   # its SIGKILL is not logged as an error
    exited: bool = False              # reaped; its channel is read until its EOF

    def __repr__(self):
        return "%s (pid: %s, gen=%s)" % (self.role.value, self.pid, self.generation)

    @property
    def kind(self):
        """A spawner's kind, as its workers' `spawned_from` says it."""
        return self.role.value

    @property
    def retiring(self):
        return self.state is State.RETIRING

    @property
    def usable(self):
        return self.state is State.READY and not self.stuck

    @property
    def outgoing(self):
        return self.outgoing_why is not None

    def heartbeat_moved(self):
        """True once the worker has notified its heartbeat (it is in its serving loop)."""
        try:
            return self.worker.tmp.last_update() != self.spawned_mtime
        except (OSError, ValueError):
            return False

    def request_spawn(self, age, slot, fds, listeners=0, hook_state=False):
        self.last_used = time.monotonic()
        protocol.send(self.channel, protocol.SpawnWorker(age, slot, listeners, hook_state),
                      fds)


@dataclasses.dataclass(eq=False)
class Seat:
    """reuse_port: one worker's listening sockets, bound by the master for `address`."""
    address: tuple                    # the configured addresses it was bound for
    listeners: list

    def close(self):
        for listener in self.listeners:
            listener.close()


@dataclasses.dataclass(frozen=True)
class ChannelClosed:
    """Not a message: the spawner's channel hit EOF (it exited; reaped apart)."""


@dataclasses.dataclass(frozen=True)
class ChannelBroken:
    """Not a message: what came was no message; the table has killed the spawner."""
    error: str


def signal_name(number):
    try:
        return signal.Signals(number).name
    except ValueError:  # a real-time signal has no name
        return "signal %d" % number


class Fleet:
    def __init__(self, log, workers):
        self.log = log
        self.workers = workers      # gunicorn's WORKERS: pid -> Worker, kept from here
        self.by_pid = {}            # every process not reaped yet: pid -> record
        self.pending = {}           # workers queued or sent: age -> record
        self.counters = Counters()  # inherited by every process forked from here on
        self.seats = {}             # reuse_port: seat number -> its Seat
        self.seat_numbers = itertools.count()
        self.preloader = None       # the preloader serving spawn requests
        self.next_preloader = None  # booting after a HUP, for the next generation
        self.template = None        # the template of the current generation

    # -- looking up -------------------------------------------------------------------------

    def get(self, pid):
        return self.by_pid.get(pid)

    def worker_records(self):
        """The live workers' records (candidates included), oldest first."""
        return sorted((r for r in self.by_pid.values() if r.role is Role.WORKER
                       and r.state in LIVE_WORKER and not r.exited),
                      key=lambda r: r.worker.age)

    def spawners(self):
        """The preloaders and templates whose channel is open (candidates included)."""
        return [r for r in self.by_pid.values() if r.channel is not None
                and (r.role in (Role.PRELOADER, Role.TEMPLATE) or r.state is State.CANDIDATE)]

    def current_spawner(self):
        """The spawner to ask: the template if it is usable, else the preloader, or None."""
        for spawner in (self.template, self.preloader):
            if spawner is not None and spawner.usable:
                return spawner
        return None

    def outgoing(self):
        return [r for r in self.worker_records() if r.outgoing]

    # -- asking for workers ---------------------------------------------------------------

    def queue(self, worker, spawner, slot, pre_fork_state):
        """Worker `worker` (gunicorn's object, not forked yet) is to come from `spawner`."""
        record = ChildRecord(Role.WORKER, State.QUEUED, spawner.generation, worker=worker,
                             spawner_pid=spawner.pid, spawned_from=spawner.kind, slot=slot,
                             pre_fork_state=pre_fork_state, asked_at=time.monotonic(),
                             spawned_mtime=worker.tmp.last_update())
        self.pending[worker.age] = record
        return record

    def to_send(self):
        """The queued workers to send now: each spawner's oldest, when it has none in flight."""
        in_flight = {r.spawner_pid for r in self.pending.values() if r.state is State.SENT}
        out = []
        for _age, record in sorted(self.pending.items()):
            if record.state is State.QUEUED and record.spawner_pid not in in_flight:
                in_flight.add(record.spawner_pid)
                out.append(record)
        return out

    @staticmethod
    def sent(record):
        record.state = State.SENT
        record.spawn_deadline = time.monotonic() + SPAWN_TIMEOUT

    def overdue(self, now):
        return [r for r in self.pending.values()
                if r.state is State.SENT and now > r.spawn_deadline]

    def pending_of(self, spawner_pid):
        return [r for r in self.pending.values() if r.spawner_pid == spawner_pid]

    def busy_spawners(self):
        return {r.spawner_pid for r in self.pending.values()}

    def drop_queued(self, spawner_pid=None):
        """Forget the requests queued (not sent) for `spawner_pid`, or for every spawner:
        it is retired (the next spawner is asked instead), or the server stops."""
        for record in list(self.pending.values()):
            if record.state is State.QUEUED and spawner_pid in (None, record.spawner_pid):
                self.forget_pending(record.worker.age)

    def forget_pending(self, age):
        """Give up worker `age` before it checked in."""
        record = self.pending.pop(age, None)
        if record is not None:
            record.worker.tmp.close()
            self.release(record)

    def checked_in(self, age, pid):
        """Pending worker `age` is process `pid` (a standby until now): it serves. Returns
        its record, or None if it was given up."""
        record = self.pending.pop(age, None)
        if record is None:
            return None
        standby = self.by_pid.pop(pid, None)
        spawner = self.get(record.spawner_pid)
        if standby is not None and spawner is not None and spawner.standby_pid == pid:
            spawner.standby_pid = None
        self.serving(record, pid)
        return record

    def add_direct(self, worker, pid, generation, slot, channel, spawned_mtime):
        """A worker gunicorn's way, forked from the master itself."""
        record = ChildRecord(Role.WORKER, State.SERVING, generation, worker=worker,
                             spawner_pid=os.getpid(), spawned_from="master", slot=slot,
                             channel=channel, asked_at=time.monotonic(),
                             spawned_mtime=spawned_mtime)
        self.serving(record, pid)
        return record

    def serving(self, record, pid):
        record.pid = record.worker.pid = pid
        record.state = State.SERVING
        self.by_pid[pid] = record
        self.workers[pid] = record.worker

    # -- a worker's life ------------------------------------------------------------------

    def make_outgoing(self, record, why):
        record.outgoing_why = why
        if record.state is State.SERVING:
            record.state = State.OUTGOING

    def told_to_stop(self, pid):
        """The master signalled worker `pid` to stop (a replacement, TTOU, a timeout)."""
        record = self.get(pid)
        if record is not None and record.role is Role.WORKER and record.state in LIVE_WORKER:
            record.stopped_on_purpose = True
            if record.state is not State.CANDIDATE:
                record.state = State.STOPPING

    def note_booted(self):
        """Mark the workers whose heartbeat has moved (before a reap closes it)."""
        for record in self.worker_records():
            if not record.booted and record.heartbeat_moved():
                record.booted = True

    def release_departed(self):
        """End the record of every worker gunicorn has forgotten (reaped); returns them.
        A refork's candidate is kept until its channel's EOF is read (spawner_gone)."""
        gone = [r for r in self.worker_records() if r.pid not in self.workers]
        for record in gone:
            record.exited = True
            if record.state is State.CANDIDATE and record.channel is not None:
                self.counters.release(record.slot)
                record.slot = None
            else:
                del self.by_pid[record.pid]
                self.release(record)
        return gone

    def release(self, record):
        self.counters.release(record.slot)
        record.slot = None
        if record.channel is not None:
            record.channel.close()
            record.channel = None

    # -- a refork's candidate and the template ----------------------------------------------

    def make_candidate(self, record):
        """Worker `record` is to become the template: its channel is read from now on."""
        record.state = State.CANDIDATE

    def give_back_candidate(self, record):
        """A candidate that was never told: a worker again (or gone, if it exited)."""
        if record.state is State.CANDIDATE:
            record.state = State.OUTGOING if record.outgoing else State.SERVING
        if record.exited:
            self.close_channel(record)

    def template_ready(self, record):
        """Candidate `record` is a template now: no longer a worker (gunicorn must not time
        it out), reaped as a spawner; its Worker is kept for child_exit."""
        self.workers.pop(record.pid, None)
        record.worker.tmp.close()
        record.role, record.state, record.ready = Role.TEMPLATE, State.READY, True
        self.counters.release(record.slot)
        record.slot = None

    def set_template(self, record):
        """`record` serves the spawn requests of its generation; returns the one before."""
        old, self.template = self.template, record
        return old

    def drop_template(self, record=None):
        """Forget the template (or `record`, if it is the template)."""
        if record is None or record is self.template:
            self.template = None

    # -- preloaders -----------------------------------------------------------------------

    def add_preloader(self, pid, channel, generation, boot_timeout, next_generation):
        now = time.monotonic()
        record = ChildRecord(Role.PRELOADER, State.BOOTING, generation, pid=pid,
                             channel=channel, started_at=now, last_used=now,
                             boot_deadline=now + boot_timeout if boot_timeout else None)
        self.by_pid[pid] = record
        if next_generation:
            self.next_preloader = record
        else:
            self.preloader = record
        return record

    def switch_preloader(self):
        """A HUP's next preloader becomes the preloader; returns the one before."""
        old, self.preloader, self.next_preloader = self.preloader, self.next_preloader, None
        return old

    def drop_preloader(self, record):
        """Forget `record` as the preloader or the next one (it exited, or was stopped)."""
        if record is self.preloader:
            self.preloader = None
        if record is self.next_preloader:
            self.next_preloader = None

    @staticmethod
    def spawner_ready(record):
        """Preloader `record` loaded the app: it takes spawn requests (unless retiring)."""
        record.ready = True
        if record.state is State.BOOTING:
            record.state = State.READY

    # -- standbys -------------------------------------------------------------------------

    def standby_ready(self, spawner, pid):
        spawner.standby_pid = pid
        self.by_pid[pid] = ChildRecord(Role.STANDBY, State.WAITING, spawner.generation,
                                       pid=pid, spawner_pid=spawner.pid)

    def unneeded_standby(self):
        """The preloader's standby while a template takes the spawns, or None. The
        preloader is then the fallback for a template that dies, which is rare; its standby
        would hold for nothing the pages it copied from the last worker (prefault.py), and
        after a refork's stand-in, it is forked while the new workers start. Without it,
        the preloader forks a worker on demand, then its standby again."""
        preloader = self.preloader
        if (preloader is None or preloader.standby_pid is None or self.template is None
                or self.current_spawner() is not self.template
                or self.pending_of(preloader.pid)):
            return None
        return preloader.standby_pid

    def kill_standby(self, spawner, pid, sig=signal.SIGKILL):
        """Kill `spawner`'s standby `pid`: it took a request given up meanwhile, or (with
        SIGTERM, its default action until it is a worker) it is not needed. It is reaped
        and logged as a standby."""
        if spawner.standby_pid == pid:
            spawner.standby_pid = None
        standby = self.by_pid.setdefault(pid, ChildRecord(
            Role.STANDBY, State.WAITING, spawner.generation, pid=pid, spawner_pid=spawner.pid))
        standby.killed_on_purpose = True
        self.signal(pid, sig)

    # -- messages -------------------------------------------------------------------------

    def read(self, spawners):
        """Yield (spawner, message) for what has arrived from `spawners`; a message may be
        ChannelClosed or ChannelBroken, after which the spawner's channel is closed."""
        for spawner in spawners:
            while spawner.channel is not None:
                try:
                    message, fds = protocol.recv(spawner.channel)
                except BlockingIOError:
                    break
                except (EOFError, ConnectionError):
                    self.close_channel(spawner)
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
        self.close_channel(spawner)
        return ChannelBroken(str(exc))

    def close_channel(self, record):
        """Close `record`'s channel; a process already reaped is then gone from the table."""
        if record.channel is not None:
            record.channel.close()
            record.channel = None
        if record.exited and self.by_pid.get(record.pid) is record:
            del self.by_pid[record.pid]

    # -- stopping spawners ----------------------------------------------------------------

    def retire(self, spawner):
        """Stop using `spawner` (it leaves its slot); it is stopped once no spawn waits on
        it (close_retired). A preloader still loading the app is killed: nothing in it to
        keep. A refork's candidate is still a serving worker, finishing its requests:
        gunicorn stops it like any worker."""
        self.drop_queued(spawner.pid)
        self.drop_preloader(spawner)
        self.drop_template(spawner)
        if spawner.state is State.BOOTING:
            spawner.state = State.RETIRING
            self.kill(spawner)
        elif spawner.state is State.READY:
            spawner.state = State.RETIRING
            self.close_retired()

    def close_retired(self):
        """Close the retired spawners no spawn waits on (a check-in must not be lost)."""
        busy = self.busy_spawners()
        for spawner in self.spawners():
            if spawner.retiring and spawner.ready and spawner.pid not in busy:
                self.close_channel(spawner)
                # Not only the EOF: a process forked from the master by gunicorn or a
                # hook may still hold a copy of the channel.
                self.signal(spawner.pid, signal.SIGTERM)

    def kill(self, record):
        """SIGKILL on purpose: its exit is logged at info; the reason was logged already."""
        record.killed_on_purpose = True
        self.signal(record.pid, signal.SIGKILL)

    def signal(self, pid, sig):
        """Signal `pid` only while it is a child we have not reaped."""
        record = self.by_pid.get(pid)
        if (record is not None and not record.exited) or pid in self.workers:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass  # a zombie: reaped soon

    def signal_helpers(self, sig):
        for pid in self.helper_pids():
            self.signal(pid, sig)

    def helper_pids(self):
        """The children that are not gunicorn's workers: spawners and standbys."""
        return [pid for pid, r in self.by_pid.items() if pid not in self.workers
                and r.role is not Role.WORKER and not r.exited]

    def close_all(self):
        for spawner in self.spawners():
            if spawner.role is not Role.WORKER:
                self.close_channel(spawner)
        self.preloader = self.next_preloader = self.template = None

    def close_in_child(self):
        """In a child forked from the master: close every channel, heartbeat and seat of
        ours, through their objects (so that nothing closes the numbers again later)."""
        for record in (*self.by_pid.values(), *self.pending.values()):
            if record.channel is not None:
                record.channel.close()
            if record.worker is not None:
                record.worker.tmp.close()
        for worker in self.workers.values():
            worker.tmp.close()
        self.close_seats()

    # -- reaping helpers ------------------------------------------------------------------

    def reap(self):
        """Reap (and log) exited helpers: spawners and standbys. Returns the Workers that
        the reaped templates were (the master calls child_exit for them)."""
        ended = []
        for pid in self.helper_pids():
            try:
                wpid, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                wpid, status = pid, None  # gunicorn's waitpid(-1) reaped it first
            if wpid:
                ended += self.reaped(self.by_pid[pid], status)
        return ended

    def reaped(self, record, status):
        """`record`'s process has been reaped: its pid is no longer ours to signal. A
        spawner's record stays until its channel's EOF is read (spawner_gone)."""
        record.exited = True
        if record.role is Role.STANDBY:
            spawner = self.get(record.spawner_pid)
            if spawner is not None and spawner.standby_pid == record.pid:
                spawner.standby_pid = None
        if record.channel is None:
            del self.by_pid[record.pid]
        if status is not None:
            self.log_exit(record, status)
        return [record.worker] if record.role is Role.TEMPLATE and record.worker else []

    def log_exit(self, record, status):
        """An expected exit at DEBUG: the lines of what retired it (a HUP, a refork, a
        shutdown, a kill) say it at INFO or above."""
        if os.WIFSIGNALED(status):
            number = os.WTERMSIG(status)
            expected = number == signal.SIGTERM or record.killed_on_purpose
            (self.log.debug if expected else self.log.error)(
                "%r was sent %s", record, signal_name(number))
        elif os.WEXITSTATUS(status):
            self.log.error("%r exited with code %s", record, os.WEXITSTATUS(status))
        else:
            self.log.debug("%r exited", record)

    def wait_all(self, deadline):
        """Reap every helper by `deadline`; SIGKILL those still running then. Returns
        the Workers the reaped templates were."""
        ended = []
        while self.helper_pids() and time.monotonic() < deadline:
            ended += self.reap()
            time.sleep(0.05)
        for pid in self.helper_pids():
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
            ended += self.reaped(self.by_pid[pid], None)
        return ended

    # -- reuse_port seats ---------------------------------------------------------------

    def seat_for(self, record, leaving, address, make):
        """Give `record` a seat of `address` (the configured addresses) that no staying
        worker keeps: one an outgoing or departed worker leaves (`leaving`: pids), else a
        new one, `make()` (its listening sockets). Returns its listening sockets.

        With reuse_port each worker listens on sockets the master binds for it and keeps:
        when a worker is replaced (a HUP, a recycle, a refork) its replacement is given the
        same sockets while the old one still serves, so the connections queued on them
        are served instead of being reset by the kernel when the last copy is closed
        (plain gunicorn's reuse_port loses them at every HUP). A seat of other addresses
        (a HUP changed `bind`) is never handed on: it is closed once its worker is gone."""
        kept = {r.seat for r in (*self.worker_records(), *self.pending.values())
                if r is not record and (r.pid is None or r.pid not in leaving)}
        free = [number for number, seat in self.seats.items()
                if number not in kept and seat.address == address]
        if free:
            record.seat = free[0]
        else:
            listeners = make()  # first: an OSError leaves the table as it was
            record.seat = next(self.seat_numbers)
            self.seats[record.seat] = Seat(address, listeners)
        return self.seats[record.seat].listeners

    def close_seats(self):
        """At shutdown (and in a child of the master): the port is released as the
        workers exit, as in gunicorn."""
        for seat in self.seats.values():
            seat.close()
        self.seats = {}

    def close_unused_seats(self):
        """Close the seats no worker holds (or is being given): else the kernel would go
        on queueing connections there that nobody accepts (TTOU, a worker that died while
        no spawner can replace it)."""
        held = {r.seat for r in (*self.worker_records(), *self.pending.values())}
        for number in [number for number in self.seats if number not in held]:
            self.seats.pop(number).close()
