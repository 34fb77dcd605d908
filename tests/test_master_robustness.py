"""The master under what a hostile operator or app does: each case a real server.

- a spawner that names a pid which is no child of the master (app code in the preloader
  can write on its channel) never makes the master signal it, nor crash;
- a helper killed by a real-time signal does not crash the master;
- a HUP does not turn refork back on under --reload, and a HUP that turns --reload on
  falls back to direct spawning, so edited code takes effect (as in gunicorn);
- TERM while the workers are being spawned spawns no more of them;
- `smartspawn status` does not read a state directory that is not the user's own, and
  a file in its place does not stop the server;
- a direct-spawned worker keeps no copy of the master's signal wakeup fd.
"""
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from conftest import wait_for

SEND_FROM_ON_PRELOAD = """\
def on_preload(preloader):
    from gunicorn_smartspawn.shared import protocol  # not at module level: gunicorn has a setting
    protocol.send(preloader.channel, protocol.{message})  # named `protocol`
"""


@pytest.fixture
def bystander():
    """A process that is no child of the server: it must survive whatever a spawner says."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait(5)


@pytest.mark.parametrize("message", ["WorkerSpawned(1, {pid})", "WorkerSpawned(1, 2**22 + 7)"])
def test_a_pid_named_by_a_spawner_that_is_no_child_is_never_signalled(
        make_server, bystander, message):
    config = SEND_FROM_ON_PRELOAD.format(message=message.format(pid=bystander.pid))
    server = make_server(config=config).start(wait=False)
    # The preloader is broken, before it ever loaded the app: a boot error, as gunicorn's.
    assert server.wait_exit() == 3, server.log()
    assert "killing it" in server.log()
    assert "Traceback" not in server.log()
    assert bystander.poll() is None


def test_a_standby_that_is_no_child_is_not_tracked(make_server, bystander):
    # As for a standby that exited (its spawner died) and was reaped before its
    # StandbyReady was read: nothing to track, and the spawner is not blamed for it.
    config = SEND_FROM_ON_PRELOAD.format(message="StandbyReady(%d)" % bystander.pid)
    server = make_server(config=config).start()
    server.wait_log(r"preloader \(pid: \d+, gen=1\): its standby \(pid: %d\) is gone "
                    r"already" % bystander.pid)
    assert server.get_ok()
    assert server.stop() == 0
    assert bystander.poll() is None


def test_a_standby_killed_by_a_real_time_signal(make_server):
    server = make_server(workers=2).start()
    standby = server.single("smartspawn standby")
    os.kill(standby, signal.SIGRTMIN + 6)
    server.wait_log(r"standby \(pid: %d, gen=\d+\) was sent signal %d"
                    % (standby, signal.SIGRTMIN + 6))
    server.signal(signal.SIGTTIN)  # the spawner finds its standby gone and makes another
    wait_for(lambda: len(server.worker_pids()) == 3, what="a third worker")
    assert server.get_ok()
    assert server.stop() == 0


def test_hup_keeps_refork_off_under_reload(make_server):
    server = make_server(config="fork_worker = 10**9\n", args=("--reload",)).start()
    server.signal(signal.SIGHUP)
    wait_for(lambda: len(re.findall(r"fork_worker and refork_on_memory are off: --reload",
                                    server.log())) == 2, what="the warning again after HUP")
    server.signal(signal.SIGURG)
    server.wait_log(r"URG ignored: fork_worker is off")
    assert server.stop() == 0


def test_hup_that_turns_reload_on_falls_back_to_direct_spawning(make_server):
    server = make_server(workers=2).start()
    (server.root / "gunicorn.conf.py").write_text("reload = True\n")
    server.signal(signal.SIGHUP)
    server.wait_log(r"falling back to direct spawning: this HUP turned --reload on")
    wait_for(lambda: {server.get_json()["ppid"] for _ in range(6)} == {server.pid}
             and len(server.worker_pids()) == 2, timeout=20, what="direct-spawned workers")
    app_py = server.root / "app.py"
    app_py.write_text(app_py.read_text().replace('VERSION = "v1"', 'VERSION = "v2"'))
    wait_for(lambda: {server.get_json()["version"] for _ in range(6)} == {"v2"},
             timeout=20, what="the edited code, as gunicorn's --reload serves it")
    assert server.stop() == 0


def test_term_during_startup_spawns_no_more_workers(make_server):
    server = make_server(workers=12, config="""\
import time
def post_fork(server, worker):
    time.sleep(0.2)  # a slow boot: the master queues the other spawns meanwhile
""").start(wait=False)
    server.wait_log(r"Booting worker with pid")
    server.signal(signal.SIGTERM)
    assert server.wait_exit() == 0
    log = server.log()
    after_term = log[log.index("Handling signal: term"):]
    # The master's own lines are in order (a worker's "Booting" may be written after the
    # master's TERM line though it checked in before): at most the spawn in flight when
    # TERM came checks in after it, and it is stopped.
    assert len(re.findall(r"Worker \d+ \(pid: \d+\) checked in", after_term)) <= 2, log


def test_status_refuses_a_state_directory_that_is_not_ours(tmp_path, make_server):
    """A link planted where the server's state directory goes: the server writes nothing
    there, and `smartspawn status` reads nothing through it."""
    fake_tmp = tmp_path / "tmp"
    fake_tmp.mkdir()
    server = make_server(env={"TMPDIR": str(fake_tmp)})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (fake_tmp / ("smartspawn-%d" % os.getuid())).symlink_to(elsewhere)
    server.start()
    (elsewhere / ("%d.json" % server.pid)).write_text('{"version": 2, "planted": true}')
    link = fake_tmp / ("smartspawn-%d" % os.getuid())
    for args, said in [((), "could not write its state file"),
                       (("--state-dir", str(link)), "not reading it")]:
        result = subprocess.run([sys.executable, "-m", "smartspawn", "status", "--pid",
                                 str(server.pid), *args], capture_output=True, text=True,
                                timeout=30)
        assert result.returncode != 0
        assert said in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
        assert "planted" not in result.stdout


def test_a_file_where_the_state_directory_goes(tmp_path, make_server):
    """Another user's file (or link) at /tmp/smartspawn-<uid> must not stop the server."""
    fake_tmp = tmp_path / "tmp"
    fake_tmp.mkdir()
    (fake_tmp / ("smartspawn-%d" % os.getuid())).write_text("not a directory")
    server = make_server(env={"TMPDIR": str(fake_tmp)}).start()
    server.wait_log(r"Could not write .*smartspawn-%d/%d\.json" % (os.getuid(), server.pid))
    assert server.get_ok()
    assert server.stop() == 0


def test_direct_spawning_a_signal_during_post_fork_writes_into_no_file(make_server):
    """The master's signal wakeup fd is not kept by a direct-spawned worker: its number,
    closed there, is soon some file of the app's, and a signal would write a byte in it."""
    server = make_server(config='''\
import json, os, signal, time
spawn_method = "direct"
def post_fork(server, worker):
    files = [open(os.path.join(os.environ["TEST_DIR"], "f%d-%d" % (os.getpid(), i)), "wb")
             for i in range(8)]
    os.kill(os.getpid(), signal.SIGWINCH)  # the master's handler is still the one set
    time.sleep(0.05)
    sizes = [os.fstat(f.fileno()).st_size for f in files]
    with open(os.path.join(os.environ["TEST_DIR"], "sizes-%d" % os.getpid()), "w") as out:
        json.dump(sizes, out)
''').start()
    sizes = wait_for(lambda: [p.read_text() for p in server.root.glob("sizes-*")]
                     if len(list(server.root.glob("sizes-*"))) == 2 else None,
                     what="both workers' post_fork")
    assert sizes == ["[0, 0, 0, 0, 0, 0, 0, 0]"] * 2
    assert server.stop() == 0


def test_direct_spawning_quick_hups_do_not_delay_spawns(make_server):
    """gunicorn's own HUP stops the previous workers, booted or not: those were stopped on
    purpose, not workers failing to boot, and must not slow the spawns down."""
    server = make_server(app_file="slow_import.py", workers=6, env={"IMPORT_SECONDS": "1"},
                         config='spawn_method = "direct"\n').start(wait=False)
    server.wait_log(r"Booting worker with pid")
    for _ in range(4):
        server.signal(signal.SIGHUP)
        time.sleep(0.4)  # HUPs while the workers still import: the scenario itself
    wait_for(lambda: len(server.worker_pids()) == 6 and server.exited() is None
             and "Listening at" in server.log(), timeout=30, what="6 workers")
    assert "exited before they served" not in server.log(), server.log()
    assert server.stop() == 0
