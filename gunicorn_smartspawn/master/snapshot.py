"""What the master shows of itself: one source for the state file, the control socket
and /metrics.

`smartspawn status` reads the state file; `gunicornc show workers` and `show stats` read
the control socket; /metrics (metrics.py) reads the state file's content as the master
last published it. All are built from the two functions here, so the views of a server
cannot disagree on a field.
"""
import bisect
import time

import gunicorn

import gunicorn_smartspawn
from gunicorn_smartspawn.master.fleet import Role, State
from gunicorn_smartspawn.shared import state

# The upper bounds of the spawn latency histogram's buckets (seconds): a spawn from a
# standby takes a few milliseconds, one that waits for a fork of a large heap tens.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Latencies:
    """A histogram of durations (seconds), kept by the master for /metrics."""

    def __init__(self):
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)  # the last one: above them all
        self.sum = 0.0

    def observe(self, seconds):
        self.counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.sum += seconds

    def fields(self):
        return {"buckets": list(LATENCY_BUCKETS), "counts": list(self.counts),
                "sum": self.sum}


def worker_fields(fleet, record, now=None):
    """What smartspawn knows of one serving (or outgoing) worker.

    Times are ages in seconds at `now` (time.monotonic(), the clock the workers write),
    as gunicorn's `last_heartbeat`: `last_request` since the worker last finished one
    (None before the first); `in_flight`, `busy` and `last_request` are None for a worker
    without a slot in the counters (past counters.SLOTS workers).
    """
    now = time.monotonic() if now is None else now
    counters = fleet.counters.snapshot(record.slot)
    last_request = counters.pop("last_request_us")
    if counters["busy_since_us"] > last_request:
        # The sync worker (one request at a time) writes no in_flight: a request begun
        # after the last one finished is in flight (worker/base.py).
        counters["in_flight"] = 1
    oob_since = counters.pop("oob_since_us")
    asked, done, granted = (counters.pop(name) for name in ("oob_asked", "oob_done",
                                                            "oob_granted"))
    del counters["disabled"]  # the master's own record says it
    # Out-of-band work (outofband.py): "waiting" for the master's grant, "working".
    oob = None if asked <= done else "working" if granted == asked else "waiting"
    fields = {"generation": record.generation, "age": record.worker.age,
              "state": worker_state(record),
              "spawned_from": record.spawned_from, "uss": record.uss,
              "outgoing": record.outgoing_why, **counters,
              "busy": counters["in_flight"] > 0,
              "last_request": round(now - last_request / 1e6, 2) if last_request else None,
              "last_heartbeat": heartbeat_age(record, now),
              "disabled": record.disabled, "oob": oob,
              "oob_working_for": round(now - oob_since / 1e6, 2) if oob_since else None}
    if record.slot is None:
        fields.update(in_flight=None, busy=None, last_request=None)
    return fields


def heartbeat_age(record, now):
    """Seconds since the worker last touched its heartbeat file (gunicorn's WorkerTmp
    writes time.monotonic() as its mtime); None once the file is closed."""
    try:
        return round(now - record.worker.tmp.last_update(), 2)
    except (OSError, ValueError):
        return None


def worker_state(record):
    """The fleet's state of a worker, "booting" until it has notified its heartbeat (in
    its serving loop, accepting)."""
    if record.state in (State.SERVING, State.OUTGOING) and not record.heartbeat_moved():
        return "booting"
    return record.state.value


def server_fields(arbiter):
    """What smartspawn knows of the whole server; `lifecycle` holds the lifecycle's
    counters (the control socket shows them flat, beside gunicorn's own)."""
    fleet = arbiter.fleet
    return {"smartspawn_version": gunicorn_smartspawn.__version__,
            "gunicorn_version": gunicorn.__version__,
            "generation": arbiter.generation,
            "spawn_method": "smart" if arbiter.smart else "direct",
            "workers_target": arbiter.num_workers,
            "fork_worker": list(arbiter.cfg.fork_worker),
            "preloader_pid": fleet.preloader.pid if fleet.preloader else None,
            "preloader_running": fleet.preloader is not None,
            "template_pid": fleet.template.pid if fleet.template else None,
            **arbiter.reforker.stats(),
            "lifecycle": dict(arbiter.lifecycle.stats),
            **arbiter.coordinator.stats(arbiter.num_workers),
            # The counters' totals of the workers that have exited (counters.py).
            "departed_workers": dict(fleet.counters.departed),
            "spawn_latency": arbiter.spawn_latency.fields()}


def control_socket_worker(fleet, pid):
    """The fields `show workers` adds to gunicorn's for `pid` (none for a non-worker)."""
    record = fleet.get(pid)
    if record is None or record.role is not Role.WORKER:
        return {}
    fields = worker_fields(fleet, record)
    del fields["age"], fields["last_heartbeat"]  # gunicorn's own fields already
    return fields


def control_socket_stats(arbiter):
    """The fields `show stats` adds to gunicorn's."""
    fields = server_fields(arbiter)
    return {**fields, **fields.pop("lifecycle")}


def state_file(arbiter):
    """The state file's content: the server, then one row per process."""
    fleet = arbiter.fleet
    processes = [{"pid": arbiter.pid, "role": "master"}]
    spawners = fleet.spawners()
    for spawner in sorted(spawners, key=lambda r: r.started_at or r.asked_at):
        kind = "template" if spawner.role is Role.WORKER else spawner.kind
        role = kind if spawner.ready else kind + " (booting)"  # a candidate: booting
        processes.append({"pid": spawner.pid, "role": role,
                          "generation": spawner.generation,
                          **({"immortal": spawner.immortal} if spawner.immortal else {})})
        if spawner.standby_pid:
            processes.append({"pid": spawner.standby_pid, "role": "standby",
                              "generation": spawner.generation})
    for record in fleet.worker_records():
        if record in spawners:
            continue  # a refork's candidate, listed as "template (booting)"
        role = "worker (outgoing)" if record.outgoing else "worker"
        processes.append({"pid": record.pid, "role": role, **worker_fields(fleet, record)})
    return {"version": state.VERSION, "updated": time.time(), "master": arbiter.pid,
            "proc_name": arbiter.proc_name, **server_fields(arbiter),
            "processes": processes}
