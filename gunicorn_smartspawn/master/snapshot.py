"""What the master shows of itself: one source for the state file and the control socket.

`smartspawn status` reads the state file; `gunicornc show workers` and `show stats` read
the control socket. Both are built from the two functions here, so the two views of a
server cannot disagree on a field.
"""
import time

import gunicorn

import gunicorn_smartspawn
from gunicorn_smartspawn.master.fleet import Role
from gunicorn_smartspawn.shared import state


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
    fields = {"generation": record.generation, "age": record.worker.age,
              "spawned_from": record.spawned_from, "uss": record.uss,
              "outgoing": record.outgoing_why, **counters,
              "busy": counters["in_flight"] > 0,
              "last_request": round(now - last_request / 1e6, 2) if last_request else None,
              "last_heartbeat": heartbeat_age(record, now)}
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
            "lifecycle": dict(arbiter.lifecycle.stats)}


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
