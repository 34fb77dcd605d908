"""gunicorn's hooks keep working; on_preload and worker provenance are added."""
import json
import os
import pwd
import shutil
import signal
import tempfile
from pathlib import Path

import psutil
import pytest

from conftest import wait_for

HOOKS = '''
import json, os

def record(name, **fields):
    with open(os.path.join(os.environ["TEST_DIR"], "hooks.jsonl"), "a") as f:
        f.write(json.dumps({"hook": name, "pid": os.getpid(), **fields}) + "\\n")

def on_starting(server): record("on_starting")
def when_ready(server): record("when_ready")
def on_preload(preloader):
    record("on_preload", generation=preloader.generation,
           app_loaded=preloader.app.callable is not None)
def pre_fork(server, worker): record("pre_fork", age=worker.age)
def post_fork(server, worker):
    record("post_fork", spawned_from=worker.spawned_from, spawner_pid=worker.spawner_pid,
           generation=worker.generation, preloaded=worker.preloaded, ppid=os.getppid())
def post_worker_init(worker): record("post_worker_init")
def worker_exit(server, worker): record("worker_exit")
def child_exit(server, worker): record("child_exit", worker_pid=worker.pid)
def on_exit(server): record("on_exit")
'''


def hooks(server):
    path = server.root / "hooks.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def called(server, name):
    return [h for h in hooks(server) if h["hook"] == name]


def test_gunicorn_hooks_and_on_preload_in_the_right_processes(make_server):
    server = make_server(workers=2, config=HOOKS).start()
    assert "takes what hooks set" not in server.log()  # its pre_fork sets nothing
    preloader = server.preloader_pid()
    wait_for(lambda: len(called(server, "post_worker_init")) == 2, what="post_worker_init x2")
    master = server.pid
    assert [h["pid"] for h in called(server, "on_starting")] == [master]
    assert [h["pid"] for h in called(server, "when_ready")] == [master]
    assert called(server, "on_preload") == [
        {"hook": "on_preload", "pid": preloader, "generation": 1, "app_loaded": True}]
    assert {h["pid"] for h in called(server, "pre_fork")} == {master}
    post_fork = called(server, "post_fork")
    assert {h["pid"] for h in post_fork} == set(server.worker_pids())
    for h in post_fork:
        assert h["spawned_from"] == "preloader" and h["preloaded"] is True
        assert h["spawner_pid"] == preloader and h["generation"] == 1
        assert h["ppid"] == master

    victim = server.worker_pids()[0]
    os.kill(victim, signal.SIGTERM)
    wait_for(lambda: [h for h in called(server, "child_exit") if h["worker_pid"] == victim],
             what="child_exit for the stopped worker")
    assert any(h["pid"] == victim for h in called(server, "worker_exit"))

    assert server.stop() == 0
    assert [h["pid"] for h in called(server, "on_exit")] == [master]


def test_post_fork_says_master_with_direct_spawning(make_server):
    server = make_server(workers=1, config=HOOKS + 'spawn_method = "direct"\n').start()
    wait_for(lambda: called(server, "post_fork"), what="post_fork")
    (h,) = called(server, "post_fork")
    assert h["spawned_from"] == "master" and h["preloaded"] is False
    assert called(server, "on_preload") == []


def test_hup_starts_generation_2_with_its_own_on_preload(make_server):
    server = make_server(workers=1, config=HOOKS).start()
    server.signal(signal.SIGHUP)
    wait_for(lambda: [h for h in called(server, "post_fork") if h["generation"] == 2],
             what="a generation 2 worker")
    assert [h["generation"] for h in called(server, "on_preload")] == [1, 2]


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")
def test_preloader_drops_privileges_before_importing_the_app(make_server):
    nobody = pwd.getpwnam("nobody")
    # pytest's tmp_path is private to root; `nobody` must reach the app and write to it.
    parent = Path(tempfile.mkdtemp(prefix="smartspawn-privs-"))
    try:
        os.chmod(parent, 0o755)
        server = make_server(workers=2, parent=parent,
                             args=["--user", "nobody", "--group", str(nobody.pw_gid)])
        os.chmod(server.root, 0o777)
        server.start()
        preloader = server.preloader_pid()
        assert psutil.Process(preloader).uids().real == nobody.pw_uid
        assert psutil.Process(server.pid).uids().real == 0
        assert server.get_json()["uid"] == nobody.pw_uid
        assert server.lines("imports.txt") == [str(preloader)]
        assert server.stop() == 0
    finally:
        shutil.rmtree(parent, ignore_errors=True)


# What a pre_fork hook sets on the worker, and on the server for that worker, is what
# post_fork and post_worker_init see: gunicorn runs pre_fork on the object the child
# serves with, in the master whose copy the child gets.
PRE_FORK_STATE = '''
import itertools, json, os

def record(name, **fields):
    with open(os.path.join(os.environ["TEST_DIR"], "hooks.jsonl"), "a") as f:
        f.write(json.dumps({"hook": name, "pid": os.getpid(), **fields}) + "\\n")

shards = itertools.count(100)

def on_starting(server):
    server.seats = {}

def pre_fork(server, worker):
    worker.shard = next(shards)
    server.seats[worker.age] = "seat-%d" % worker.shard
    record("pre_fork", age=worker.age, shard=worker.shard)

def post_fork(server, worker):
    record("post_fork", age=worker.age, shard=worker.shard, seat=server.seats[worker.age],
           spawned_from=getattr(worker, "spawned_from", "master"))

def post_worker_init(worker):
    record("post_worker_init", shard=worker.shard)
'''


@pytest.mark.parametrize("worker_class", ["smartspawn.Worker", "sync"])
def test_what_pre_fork_sets_reaches_post_fork_and_the_worker(make_server, worker_class):
    server = make_server(workers=2, worker_class=worker_class,
                         config=PRE_FORK_STATE + "fork_worker = True\n").start()
    reforks = 1 if worker_class == "sync" else 2  # plain gunicorn: TTIN, as a new spawn
    wait_for(lambda: len(called(server, "post_worker_init")) == 2, what="two workers")
    if worker_class == "sync":
        server.signal(signal.SIGTTIN)
    else:
        server.signal(signal.SIGURG)
        server.wait_log(r"refork to generation 2 \(URG\) done", timeout=30)
    wait_for(lambda: len(called(server, "post_worker_init")) >= 2 + reforks,
             what="the workers forked after the first ones")
    shards = {h["age"]: h["shard"] for h in called(server, "pre_fork")}
    post_fork = called(server, "post_fork")
    assert len(post_fork) >= 2 + reforks
    for h in post_fork:
        assert h["shard"] == shards[h["age"]]
        assert h["seat"] == "seat-%d" % shards[h["age"]]
    by_pid = {h["pid"]: h["shard"] for h in post_fork}
    for h in called(server, "post_worker_init"):
        assert h["shard"] == by_pid[h["pid"]]
    if worker_class != "sync":
        assert {"preloader", "template"} <= {h["spawned_from"] for h in post_fork}
    assert "cannot reach workers" not in server.log()
    if worker_class != "sync":  # only the hooks' own attributes travel
        server.wait_log(r"Worker 1 takes what hooks set: worker\.shard, server\.seats\n")
    assert server.stop() == 0


EXIT_HOOKS = '''
import json, os

def record(name, **fields):
    with open(os.path.join(os.environ["TEST_DIR"], "hooks.jsonl"), "a") as f:
        f.write(json.dumps({"hook": name, "pid": os.getpid(), **fields}) + "\\n")

def post_worker_init(worker): record("post_worker_init")
def worker_exit(server, worker): record("worker_exit")
def child_exit(server, worker): record("child_exit", worker_pid=worker.pid)
fork_worker = True
'''


def exits_of(server):
    """(pids that served as workers, worker_exit pids, atexit pids, child_exit pids)."""
    return ({h["pid"] for h in called(server, "post_worker_init")},
            {h["pid"] for h in called(server, "worker_exit")},
            {int(pid) for pid in server.lines("atexit.txt")},
            {h["worker_pid"] for h in called(server, "child_exit")})


@pytest.mark.parametrize("worker_class", ["smartspawn.Worker", "sync"])
def test_every_process_that_served_gets_worker_exit_atexit_and_child_exit(
        make_server, worker_class):
    """A refork's template served as a worker: when it ends (retired by the next refork,
    or at shutdown) it runs worker_exit and its atexit handlers, and the master calls
    child_exit for it (prometheus_client's mark_process_dead), as for any worker."""
    server = make_server("atexit_app.py", workers=2, worker_class=worker_class,
                         config=EXIT_HOOKS).start()
    wait_for(lambda: len(called(server, "post_worker_init")) == 2, what="two workers")
    first = set(server.worker_pids())
    if worker_class == "sync":  # plain gunicorn: the same workers, replaced by TTOU/TTIN
        server.signal(signal.SIGTTOU)
        wait_for(lambda: len(server.worker_pids()) == 1, what="one worker")
        server.signal(signal.SIGTTIN)
    else:
        for generation in (2, 3):
            server.signal(signal.SIGURG)
            server.wait_log(r"refork to generation %s \(URG\) done" % generation, timeout=30)
    # Every first-generation worker has ended by now (the first template was retired by
    # the second refork): each got all three.
    ended = first - set(server.worker_pids())
    assert ended
    wait_for(lambda: all(ended <= found for found in exits_of(server)[1:]),
             what="worker_exit, atexit and child_exit of %s\n%s" % (ended, exits_of(server)))
    assert server.stop() == 0
    served, worker_exit, atexit_run, child_exit = exits_of(server)
    assert worker_exit == served
    assert atexit_run == served
    assert child_exit == served


SLOW_WORKER_EXIT = '''
import json, os, time

def record(name, **fields):
    with open(os.path.join(os.environ["TEST_DIR"], "hooks.jsonl"), "a") as f:
        f.write(json.dumps({"hook": name, "pid": os.getpid(), **fields}) + "\\n")

def worker_exit(server, worker):
    record("worker_exit begins")
    time.sleep(1.5)
    record("worker_exit ends")
fork_worker = True
'''


@pytest.mark.parametrize("worker_class", ["smartspawn.Worker", "sync"])
def test_a_term_while_a_worker_runs_its_exit_hooks_does_not_cut_them_short(
        make_server, worker_class):
    """A second TERM (systemd's, an operator's) reaching a process that is already ending
    lets its worker_exit and atexit handlers finish: a gunicorn worker's TERM handler only
    says "stop serving". A template (retired by the next refork) is such a process too."""
    server = make_server("atexit_app.py", workers=2, worker_class=worker_class,
                         config=SLOW_WORKER_EXIT).start()
    if worker_class == "sync":  # plain gunicorn: a worker retired by TTOU
        server.signal(signal.SIGTTOU)
        ending = wait_for(lambda: [h["pid"] for h in called(server, "worker_exit begins")],
                          timeout=30, what="a worker's worker_exit")[0]
    else:  # the first refork's template, retired by the second refork
        server.signal(signal.SIGURG)
        server.wait_log(r"refork to generation 2 \(URG\) done", timeout=30)
        ending = int(server.wait_log(r"worker \(pid: (\d+), \d+ requests\) becomes the "
                                     r"template", timeout=5).group(1))
        server.signal(signal.SIGURG)
    wait_for(lambda: ending in {h["pid"] for h in called(server, "worker_exit begins")},
             timeout=30, what="worker_exit of %d" % ending)
    os.kill(ending, signal.SIGTERM)
    wait_for(lambda: not psutil.pid_exists(ending) or psutil.Process(ending).status()
             == psutil.STATUS_ZOMBIE, timeout=10, what="the end of %d" % ending)
    assert ending in {h["pid"] for h in called(server, "worker_exit ends")}, hooks(server)
    assert ending in {int(pid) for pid in server.lines("atexit.txt")}
    assert "Exception ignored" not in server.log()
    assert server.stop() == 0
