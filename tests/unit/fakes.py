"""In-process stand-ins for what the master's table and policies touch: gunicorn's Worker
(its age and heartbeat), the configuration, a clock; and `apply`, which does to the table
what the arbiter does for each action (SmartArbiter.carry_out)."""
import logging
import types

from gunicorn_smartspawn.master import actions
from gunicorn_smartspawn.master.fleet import Fleet

# Above any pid_max: signalling one could never reach a real process.
PID_BASE = 2_000_000_000
LOG = logging.getLogger("smartspawn-unit")


class Clock:
    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


class Heartbeat:
    def __init__(self):
        self.mtime = 0.0
        self.closed = False

    def last_update(self):
        if self.closed:
            raise ValueError("closed")
        return self.mtime

    def close(self):
        self.closed = True

    def fileno(self):
        return -1


class Channel:
    """A socket the table only closes."""

    def close(self):
        pass


class Worker:
    """gunicorn's Worker as the master sees it: an age, a pid, a heartbeat."""

    def __init__(self, age):
        self.age = age
        self.pid = None
        self.tmp = Heartbeat()

    def beat(self):
        self.tmp.mtime += 1.0


def config(**overrides):
    settings = dict(fork_worker=[], refork_on_memory=False, graceful_timeout=30,
                    refork_min_interval=0, max_worker_memory=None, memory_sample_interval=1.0,
                    refork_memory_growth=0.5, preloader_idle_timeout=None)
    settings.update(overrides)
    return types.SimpleNamespace(**settings)


def situation(workers=2, generation=1, **fields):
    return actions.Situation(workers=workers, generation=generation, smart=True, **fields)


class Table:
    """A Fleet with a ready preloader, and helpers to make serving workers."""

    def __init__(self, monkeypatch):
        self.signals = []
        monkeypatch.setattr("gunicorn_smartspawn.master.fleet.os.kill",
                            lambda pid, sig: self.signals.append((pid, sig)))
        self.gunicorn_workers = {}
        self.fleet = Fleet(LOG, self.gunicorn_workers)
        self.next_pid = PID_BASE
        self.ages = 0
        self.preloader = self.fleet.add_preloader(self.pid(), Channel(), 1, None, False)
        self.fleet.spawner_ready(self.preloader)

    def pid(self):
        self.next_pid += 1
        return self.next_pid

    def spawn(self, booted=True, spawner=None):
        """A worker asked of `spawner` (the preloader), checked in; booted if asked."""
        self.ages += 1
        worker = Worker(self.ages)
        spawner = spawner or self.preloader
        record = self.fleet.queue(worker, spawner, self.fleet.counters.allocate(), None)
        self.fleet.sent(record)
        self.fleet.checked_in(worker.age, self.pid())
        record.channel = Channel()  # fork_worker's
        if booted:
            worker.beat()
        return record

    def reap(self, record):
        """gunicorn's reaper: the worker leaves WORKERS."""
        del self.gunicorn_workers[record.pid]


def apply(fleet, decisions):
    """Carry out `decisions` on `fleet` as the arbiter does; returns them, as a list."""
    done = []
    for action in decisions:
        done.append(action)
        match action:
            case actions.Replace(record=record, why=why):
                fleet.make_outgoing(record, why)
            case actions.Stop(record=record):
                fleet.told_to_stop(record.pid)
            case actions.Retire(spawner=spawner) | actions.AbandonTemplate(template=spawner):
                fleet.retire(spawner)
            case actions.BeginRefork(candidate=candidate):
                fleet.make_candidate(candidate)
            case actions.GiveBack(candidate=candidate):
                fleet.give_back_candidate(candidate)
            case actions.NewTemplate(template=template, generation=generation):
                template.generation = generation
                old = fleet.set_template(template)
                if old is not None:
                    fleet.retire(old)
    return done


def kinds(decisions):
    return [type(action).__name__ for action in decisions]
