"""The signal dispositions an app installs at import are each worker's, as under gunicorn
without --preload (where the import runs in the worker after gunicorn's init_signals), and
never the spawners': they keep their own to fork.

Each test runs plain gunicorn (sync or gthread) beside smartspawn on the same app and
compares what a worker has and does.
"""
import os
import re
import signal

import pytest

from conftest import wait_for

RTMIN1 = signal.SIGRTMIN + 1

# The deregister-and-re-raise pattern, from a module the app imports through importlib:
# TERM flushes, puts back the handler it replaced (gunicorn's) and sends itself TERM again.
LAZY_SIGNALS = '''
import os, signal

from app import record, recorder

previous = signal.getsignal(signal.SIGTERM)


def flush_and_deregister(sig, frame):
    record("term")
    signal.signal(signal.SIGTERM, previous)
    os.kill(os.getpid(), sig)


flush_and_deregister.__qualname__ = "app:term"
signal.signal(signal.SIGTERM, flush_and_deregister)
signal.signal(signal.SIGUSR1, recorder("usr1"))
signal.signal(signal.SIGUSR2, recorder("usr2"))
signal.signal(signal.SIGRTMIN + 1, recorder("rtmin1"))
signal.signal(signal.SIGINT, signal.SIG_DFL)
'''


def start(make_server, mode, worker_class, threads=1, config="", workers=1):
    asgi = worker_class in ("asgi", "smartspawn.ASGIWorker")
    server = make_server("app_signals.py", workers=workers, worker_class=worker_class,
                         app="app:asgi_app" if asgi else "app:app",
                         env={"SIGNALS_MODE": mode}, args=("--threads", str(threads)),
                         config=config)
    (server.root / "lazy_signals.py").write_text(LAZY_SIGNALS)
    return server.start()


def recorded(server):
    """[(handler name, pid)] from signals.txt."""
    return [(name, int(pid)) for name, pid in
            (line.split() for line in (server.root / "signals.txt").read_text().splitlines())
            ] if (server.root / "signals.txt").exists() else []


def assert_no_spawner_errors(server):
    log = server.log()
    assert "Traceback" not in log and "fork failed" not in log, log


@pytest.mark.parametrize("mode", ["ignore_chld", "reap_chld"])
def test_sigchld_the_app_sets_at_import_is_each_workers_and_workers_spawn(make_server, mode):
    """With SIGCHLD ignored or reaped by the app's handler (set at import), workers are
    forked and replaced as usual, and each has the app's SIGCHLD, as under plain gunicorn:
    the spawner keeps its own while it forks."""
    plain = start(make_server, mode, "sync")
    smart = start(make_server, mode, "smartspawn.Worker")
    expected = plain.get_json()["dispositions"]
    assert expected["SIGCHLD"] == {"ignore_chld": "SIG_IGN", "reap_chld": "app:reap"}[mode]
    assert smart.get_json()["dispositions"] == expected
    # The app's subprocesses still run and are waited for.
    assert smart.get_json("/spawn")["returncode"] == plain.get_json("/spawn")["returncode"] == 0
    # A worker that dies is replaced from the preloader, which still forks.
    first = smart.worker_pids()[0]
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: (smart.worker_pids() or [first])[0] != first and smart.get_ok(),
             what="a replacement worker\n" + smart.log())
    assert smart.get_json()["dispositions"] == expected
    assert_no_spawner_errors(smart)
    assert smart.stop() == plain.stop() == 0


def test_the_preloader_forks_when_its_on_preload_hook_ignores_sigchld(make_server):
    """SIGCHLD set by on_preload (the preloader's own, not the app's import) is the
    spawner's to own while it forks: workers are forked and replaced."""
    server = make_server("app_signals.py", workers=2, env={"SIGNALS_MODE": "none"}, config='''
import signal
def on_preload(preloader):
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
''').start()
    first = server.worker_pids()[0]
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: first not in server.worker_pids() and len(server.worker_pids()) == 2
             and server.get_ok(), what="a replacement worker\n" + server.log())
    assert_no_spawner_errors(server)
    assert server.stop() == 0


def check_handlers_are_the_workers(server):
    """Signals to the worker run the app's handlers there; its TERM handler chains to
    gunicorn's, which stops the worker gracefully (the master replaces it)."""
    worker = server.worker_pids()[0]
    for sig in (signal.SIGUSR1, signal.SIGUSR2, RTMIN1):
        os.kill(worker, sig)
    names = {"usr1", "usr2", "rtmin1"}
    wait_for(lambda: {n for n, pid in recorded(server) if pid == worker} == names,
             what="the app's handlers to run in worker %s" % worker)
    os.kill(worker, signal.SIGTERM)
    wait_for(lambda: ("term", worker) in recorded(server), what="the app's TERM handler")
    wait_for(lambda: worker not in server.worker_pids() and server.worker_pids()
             and server.get_ok(), what="worker %s to stop and be replaced" % worker)
    assert re.search(r"Worker exiting \(pid: %d\)" % worker, server.log()), server.log()


@pytest.mark.parametrize("mode,threads,classes", [
    ("handlers", 1, ("sync", "smartspawn.Worker")),
    ("lazy", 2, ("sync", "smartspawn.Worker")),
    ("handlers", 1, ("asgi", "smartspawn.ASGIWorker")),
])
def test_handlers_the_app_installs_at_import_are_each_workers(make_server, mode, threads,
                                                               classes):
    """The app's handlers (TERM chaining to the one it replaced, USR1, USR2, a real-time
    signal, INT back to SIG_DFL) are each worker's, as under plain gunicorn: gunicorn's
    handlers stay for the signals the app left alone; the preloader never runs the app's
    handlers, not even when it is stopped."""
    plain = start(make_server, mode, classes[0], threads)
    smart = start(make_server, mode, classes[1], threads)
    expected = plain.get_json()["dispositions"]
    assert expected["SIGTERM"] == "app:term" and expected["SIGQUIT"] != "SIG_DFL"
    assert smart.get_json()["dispositions"] == expected
    preloader = smart.preloader_pid()
    for server in (plain, smart):
        check_handlers_are_the_workers(server)
    assert smart.get_json()["dispositions"] == expected
    assert smart.stop() == plain.stop() == 0
    assert preloader not in {pid for _, pid in recorded(smart)}
    assert_no_spawner_errors(smart)


@pytest.mark.parametrize("spawn_method", ["smart", "direct"])
def test_a_templates_workers_get_the_apps_handlers(make_server, spawn_method):
    """After a refork, the workers forked from the template have the app's dispositions
    too (its TERM handler chaining to each one's own gunicorn handler), also when the
    template imported the app itself; the template (a spawner now) does not run them."""
    plain = start(make_server, "handlers", "sync")
    smart = start(make_server, "handlers", "smartspawn.Worker", workers=2,
                  config="fork_worker = 1000000\nspawn_method = %r\n" % spawn_method)
    smart.signal(signal.SIGURG)
    smart.wait_log(r"refork to generation 2 .* done", timeout=30)
    template = smart.single("smartspawn template")
    expected = plain.get_json()["dispositions"]
    assert smart.get_json()["dispositions"] == expected
    check_handlers_are_the_workers(smart)
    assert smart.stop() == plain.stop() == 0
    assert template not in {pid for _, pid in recorded(smart)}
    assert_no_spawner_errors(smart)



# -- an exception in a spawner is logged -------------------------------------------------

def breaking_the_spawner(hook, argument):
    """A hook that makes this spawner's next fork raise, in its own process only."""
    return '''
def %s(%s):
    from gunicorn_smartspawn.spawner.base import Spawner

    def broken(self, *args, **kwargs):
        raise RuntimeError("the spawner broke after boot")

    Spawner.start_standby = broken
''' % (hook, argument)


def test_an_exception_in_the_preloader_is_logged_with_its_traceback(make_server):
    """An exception in the preloader after it loaded the app is logged with its traceback
    before the process ends, as plain gunicorn logs one in a worker after it loaded the
    app; the master does not claim that workers serve when none exists."""
    plain = make_server(worker_class="sync", workers=1, config='''
def post_worker_init(worker):
    raise RuntimeError("the worker broke after boot")
''').start(wait=False)
    smart = make_server(workers=1, config=breaking_the_spawner("on_preload", "preloader"))
    smart.start(wait=False)
    assert plain.wait_exit() == 3
    assert re.search(r"Exception in worker process\nTraceback(.|\n)*"
                     r"RuntimeError: the worker broke after boot", plain.log()), plain.log()
    smart.wait_log(r"Exception in preloader \(pid: \d+, gen=1\)\nTraceback(.|\n)*"
                   r"RuntimeError: the spawner broke after boot")
    smart.wait_log(r"preloader \(pid: \d+, gen=1\) exited.*; no worker is serving; "
                   r"a new preloader starts")
    assert "workers keep serving" not in smart.log()
    assert smart.stop() == 0


def test_an_exception_in_the_template_is_logged_and_the_workers_keep_serving(make_server):
    """An exception in a refork's template is logged with its traceback as the
    template's; the master spawns from the preloader again and the workers serve."""
    smart = make_server(workers=2, config="fork_worker = 1000000\n"
                        + breaking_the_spawner("pre_template_fork", "worker")).start()
    smart.signal(signal.SIGURG)
    smart.wait_log(r"Exception in template \(pid: \d+, gen=2\)\nTraceback(.|\n)*"
                   r"RuntimeError: the spawner broke after boot", timeout=30)
    smart.wait_log(r"template .*exited; spawning from the preloader")
    wait_for(lambda: len(smart.worker_pids()) == 2 and smart.get_ok(),
             what="two workers serving\n" + smart.log())
    assert "Exception in worker process" not in smart.log()
    assert smart.stop() == 0


def test_an_interval_timer_and_faulthandler_set_at_import_are_each_workers(make_server):
    """A sampling profiler's interval timer (ITIMER_PROF + a SIGPROF handler) and a
    faulthandler.register(SIGUSR2) made at import: each worker gets the ticks and dumps
    its stack on USR2 and serves on, as under plain gunicorn; the preloader, which a fork
    does not give the timer, neither gets ticks nor dies of them."""
    for server in (start(make_server, "timer", "sync", workers=2),
                   start(make_server, "timer", "smartspawn.Worker", workers=2)):
        assert server.get_json("/ticks")["ticks"] > 0, server.log()
        worker = server.worker_pids()[0]
        os.kill(worker, signal.SIGUSR2)  # 3.14 names the thread in the dump
        server.wait_log(r"Current thread 0x[0-9a-f]+ (\[[^]]*\] )?\(most recent call first\)")
        wait_for(server.get_ok, what="serving after the dump")
        assert worker in server.worker_pids(), server.log()
        assert "was sent SIGPROF" not in server.log() and "was sent SIGUSR2" not in server.log()
